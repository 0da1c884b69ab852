//! Command opcodes: Admin (NVMe Base 2.0, section 5, Figure 141), NVM I/O (NVM Command Set 1.0,
//! Figure 18) and Fabrics command types (NVMe Base 2.0 section 6, Figure 542; NVMe over Fabrics
//! 1.1, Figure 10).
//!
//! Opcode spaces are open (vendor ranges, newer revisions), so each is a lossless `u8` newtype with
//! named constants: an opcode we do not know survives as its value and is answered with Invalid
//! Command Opcode by the command parsers, not dropped here.

use std::fmt;

macro_rules! opcodes {
    ($(#[$tm:meta])* $ty:ident { $( $(#[$m:meta])* $name:ident = $val:expr, $text:expr; )* }) => {
        $(#[$tm])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $ty(pub u8);

        impl $ty {
            $( $(#[$m])* pub const $name: $ty = $ty($val); )*

            /// Every named value with its spec name.
            pub const ALL: &'static [($ty, &'static str)] = &[ $( ($ty::$name, $text), )* ];

            /// The spec's name of this value, if it is one we define.
            pub fn name(self) -> Option<&'static str> {
                Self::ALL.iter().find(|(o, _)| *o == self).map(|(_, n)| *n)
            }

            /// Data transfer direction encoded in bits 1:0 (NVMe Base 2.0, Figure 88 note;
            /// Fabrics uses the same convention for FCTYPE): 00b none, 01b host to controller,
            /// 10b controller to host, 11b bidirectional.
            pub const fn xfer_bits(self) -> u8 {
                self.0 & 0x3
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => write!(f, "{}({:#04x} {n})", stringify!($ty), self.0),
                    None => write!(f, "{}({:#04x})", stringify!($ty), self.0),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{:#04x}", self.0),
                }
            }
        }

        impl From<u8> for $ty {
            fn from(v: u8) -> Self {
                Self(v)
            }
        }

        impl From<$ty> for u8 {
            fn from(v: $ty) -> u8 {
                v.0
            }
        }
    };
}

opcodes! {
    /// Admin command opcode (NVMe Base 2.0, Figure 141).
    AdminOpcode {
        DELETE_IO_SQ = 0x00, "Delete I/O Submission Queue";
        CREATE_IO_SQ = 0x01, "Create I/O Submission Queue";
        GET_LOG_PAGE = 0x02, "Get Log Page";
        DELETE_IO_CQ = 0x04, "Delete I/O Completion Queue";
        CREATE_IO_CQ = 0x05, "Create I/O Completion Queue";
        IDENTIFY = 0x06, "Identify";
        ABORT = 0x08, "Abort";
        SET_FEATURES = 0x09, "Set Features";
        GET_FEATURES = 0x0a, "Get Features";
        ASYNC_EVENT_REQUEST = 0x0c, "Asynchronous Event Request";
        NS_MANAGEMENT = 0x0d, "Namespace Management";
        FIRMWARE_COMMIT = 0x10, "Firmware Commit";
        FIRMWARE_DOWNLOAD = 0x11, "Firmware Image Download";
        DEVICE_SELF_TEST = 0x14, "Device Self-test";
        NS_ATTACHMENT = 0x15, "Namespace Attachment";
        KEEP_ALIVE = 0x18, "Keep Alive";
        DIRECTIVE_SEND = 0x19, "Directive Send";
        DIRECTIVE_RECEIVE = 0x1a, "Directive Receive";
        VIRTUALIZATION_MANAGEMENT = 0x1c, "Virtualization Management";
        NVME_MI_SEND = 0x1d, "NVMe-MI Send";
        NVME_MI_RECEIVE = 0x1e, "NVMe-MI Receive";
        CAPACITY_MANAGEMENT = 0x20, "Capacity Management";
        LOCKDOWN = 0x24, "Lockdown";
        DOORBELL_BUFFER_CONFIG = 0x7c, "Doorbell Buffer Config";
        /// All Fabrics commands share this opcode; the command type is FCTYPE (byte 4).
        FABRICS = 0x7f, "Fabrics Command";
        FORMAT_NVM = 0x80, "Format NVM";
        SECURITY_SEND = 0x81, "Security Send";
        SECURITY_RECEIVE = 0x82, "Security Receive";
        SANITIZE = 0x84, "Sanitize";
        GET_LBA_STATUS = 0x86, "Get LBA Status";
    }
}

opcodes! {
    /// NVM Command Set I/O opcode (NVM Command Set 1.0, Figure 18; Zoned Namespace Command Set
    /// for the 79h..7Dh names).
    IoOpcode {
        FLUSH = 0x00, "Flush";
        WRITE = 0x01, "Write";
        READ = 0x02, "Read";
        WRITE_UNCORRECTABLE = 0x04, "Write Uncorrectable";
        COMPARE = 0x05, "Compare";
        WRITE_ZEROES = 0x08, "Write Zeroes";
        DATASET_MANAGEMENT = 0x09, "Dataset Management";
        VERIFY = 0x0c, "Verify";
        RESERVATION_REGISTER = 0x0d, "Reservation Register";
        RESERVATION_REPORT = 0x0e, "Reservation Report";
        RESERVATION_ACQUIRE = 0x11, "Reservation Acquire";
        RESERVATION_RELEASE = 0x15, "Reservation Release";
        COPY = 0x19, "Copy";
        ZONE_MGMT_SEND = 0x79, "Zone Management Send";
        ZONE_MGMT_RECEIVE = 0x7a, "Zone Management Receive";
        ZONE_APPEND = 0x7d, "Zone Append";
        /// Fabrics commands (e.g. a Connect on an I/O queue) carry this opcode on I/O queues too.
        FABRICS = 0x7f, "Fabrics Command";
    }
}

opcodes! {
    /// Fabrics Command Type, FCTYPE at byte 4 of a Fabrics command (opcode 7Fh)
    /// (NVMe Base 2.0, Figure 542; NVMe over Fabrics 1.1, Figure 10).
    FabricsType {
        PROPERTY_SET = 0x00, "Property Set";
        CONNECT = 0x01, "Connect";
        PROPERTY_GET = 0x04, "Property Get";
        AUTHENTICATION_SEND = 0x05, "Authentication Send";
        AUTHENTICATION_RECEIVE = 0x06, "Authentication Receive";
        DISCONNECT = 0x08, "Disconnect";
    }
}

impl FabricsType {
    /// FCTYPE values C0h..FFh are vendor specific.
    pub const fn is_vendor(self) -> bool {
        self.0 >= 0xc0
    }
}

impl AdminOpcode {
    /// Opcodes C0h..FFh are vendor specific.
    pub const fn is_vendor(self) -> bool {
        self.0 >= 0xc0
    }
}

impl IoOpcode {
    /// Opcodes 80h..FFh are vendor specific for the NVM Command Set.
    pub const fn is_vendor(self) -> bool {
        self.0 >= 0x80
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_names() {
        assert_eq!(AdminOpcode::IDENTIFY.0, 0x06);
        assert_eq!(AdminOpcode::KEEP_ALIVE.0, 0x18);
        assert_eq!(AdminOpcode::FABRICS.0, 0x7f);
        assert_eq!(IoOpcode::WRITE_ZEROES.0, 0x08);
        assert_eq!(IoOpcode::VERIFY.0, 0x0c);
        assert_eq!(FabricsType::PROPERTY_GET.0, 0x04);
        assert_eq!(FabricsType::DISCONNECT.0, 0x08);
        assert_eq!(format!("{:?}", IoOpcode::READ), "IoOpcode(0x02 Read)");
        assert_eq!(format!("{:?}", IoOpcode(0x83)), "IoOpcode(0x83)");
        assert_eq!(AdminOpcode(0xc3).to_string(), "0xc3");
        assert_eq!(IoOpcode::WRITE.xfer_bits(), 0b01);
        assert_eq!(IoOpcode::READ.xfer_bits(), 0b10);
        assert_eq!(FabricsType::CONNECT.xfer_bits(), 0b01);
    }

    #[test]
    fn every_value_round_trips_and_names_are_unique() {
        for v in 0..=u8::MAX {
            assert_eq!(u8::from(AdminOpcode::from(v)), v);
            assert_eq!(u8::from(IoOpcode::from(v)), v);
            assert_eq!(u8::from(FabricsType::from(v)), v);
        }
        for (i, (a, _)) in AdminOpcode::ALL.iter().enumerate() {
            assert!(AdminOpcode::ALL[i + 1..].iter().all(|(b, _)| a != b));
        }
        for (i, (a, _)) in IoOpcode::ALL.iter().enumerate() {
            assert!(IoOpcode::ALL[i + 1..].iter().all(|(b, _)| a != b));
        }
    }
}
