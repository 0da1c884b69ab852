//! NVMe/TCP PDUs (NVMe/TCP Transport Specification 1.0, section 3.6).
