//! NVMe/TCP initiator (host side).
