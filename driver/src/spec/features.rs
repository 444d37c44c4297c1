//! Feature identifiers and values for Get/Set Features (NVMe Base 2.0
//! Set Features command, Feature Identifiers table).

/// Feature Identifiers (CDW10 7:0).
pub mod fid {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power Management.
    pub const POWER_MGMT: u8 = 0x02;
    /// Temperature Threshold.
    pub const TEMP_THRESHOLD: u8 = 0x04;
    /// Volatile Write Cache.
    pub const VOLATILE_WC: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Interrupt Coalescing.
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    /// Keep Alive Timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
}

/// Get Features SEL values (CDW10 10:8).
pub mod sel {
    /// Current value.
    pub const CURRENT: u8 = 0;
    /// Default value.
    pub const DEFAULT: u8 = 1;
    /// Saved value.
    pub const SAVED: u8 = 2;
    /// Supported capabilities.
    pub const SUPPORTED: u8 = 3;
}

/// Asynchronous Event Configuration bits (FID 0Bh, CDW11).
pub mod aec {
    /// SMART / Health critical warnings, bits 7:0.
    pub const SMART: u32 = 0xff;
    /// Namespace Attribute Notices.
    pub const NS_ATTR: u32 = 1 << 8;
    /// Firmware Activation Notices.
    pub const FW_ACT: u32 = 1 << 9;
    /// Telemetry Log Notices.
    pub const TELEMETRY: u32 = 1 << 10;
    /// ANA Change Notices.
    pub const ANA_CHANGE: u32 = 1 << 11;
}

/// Number of Queues (FID 07h) as counts of I/O queues (1-based).
///
/// On the wire (Set Features CDW11 and completion DW0) both fields are
/// 0-based: NSQR/NSQA bits 15:0, NCQR/NCQA bits 31:16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NumberOfQueues {
    /// I/O submission queues.
    pub nsq: u16,
    /// I/O completion queues.
    pub ncq: u16,
}

impl NumberOfQueues {
    /// Set Features CDW11 requesting these counts. Counts of 0 are sent as 1
    /// (the wire value 0 means one queue); 65535 is sent as 0-based 65534
    /// because 0xFFFF is invalid.
    pub const fn to_cdw11(self) -> u32 {
        let sq = wire(self.nsq) as u32;
        let cq = wire(self.ncq) as u32;
        sq | (cq << 16)
    }

    /// Decodes completion DW0 (allocated counts). A 0-based 0xFFFF saturates to 65535.
    pub const fn from_dw0(dw0: u32) -> Self {
        Self {
            nsq: (dw0 as u16).saturating_add(1),
            ncq: ((dw0 >> 16) as u16).saturating_add(1),
        }
    }
}

const fn wire(count: u16) -> u16 {
    let v = count.saturating_sub(1);
    if v == 0xffff {
        0xfffe
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_of_queues_zero_based() {
        let q = NumberOfQueues { nsq: 64, ncq: 8 };
        assert_eq!(q.to_cdw11(), (7 << 16) | 63);
        assert_eq!(NumberOfQueues::from_dw0((7 << 16) | 63), q);
        // QEMU answers 63/63 = 64 queues each.
        assert_eq!(
            NumberOfQueues::from_dw0(0x003f_003f),
            NumberOfQueues { nsq: 64, ncq: 64 }
        );
        assert_eq!(
            NumberOfQueues::from_dw0(0),
            NumberOfQueues { nsq: 1, ncq: 1 }
        );
        assert_eq!(NumberOfQueues { nsq: 1, ncq: 1 }.to_cdw11(), 0);
        assert_eq!(NumberOfQueues { nsq: 0, ncq: 0 }.to_cdw11(), 0);
        assert_eq!(
            NumberOfQueues {
                nsq: u16::MAX,
                ncq: 2
            }
            .to_cdw11(),
            0x0001_fffe
        );
        assert_eq!(
            NumberOfQueues::from_dw0(u32::MAX),
            NumberOfQueues {
                nsq: u16::MAX,
                ncq: u16::MAX
            }
        );
    }

    #[test]
    fn aec_bits() {
        assert_eq!(aec::SMART | aec::NS_ATTR | aec::ANA_CHANGE, 0x9ff);
        assert_eq!(aec::FW_ACT | aec::TELEMETRY, 0x600);
    }
}
