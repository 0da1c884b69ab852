//! The Tessera NVMe/TCP target: transport, controllers, namespaces; and the initiator.
