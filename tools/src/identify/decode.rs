//! Decoding of Identify Controller and Identify Namespace fields into words: bit sets into
//! named flags, units into bytes and milliseconds, identifiers into their usual notation.

use vfnvme::spec::identify::{IdentifyController, IdentifyNamespace, NsIdentifier};

/// Names of the bits set in `raw`, from a table of `(bit, name)`; unknown set bits become
/// `bit N`.
pub fn flags(raw: u64, table: &[(u32, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    for bit in 0..64 {
        if raw & (1 << bit) == 0 {
            continue;
        }
        match table.iter().find(|(b, _)| *b == bit) {
            Some((_, n)) => out.push((*n).to_string()),
            None => out.push(format!("bit {bit}")),
        }
    }
    out
}

/// `0x2 (multi-controller)`, `0 (none)`.
pub fn flags_text(raw: u64, table: &[(u32, &str)]) -> String {
    let f = flags(raw, table);
    if f.is_empty() {
        format!("{raw:#x} (none)")
    } else {
        format!("{raw:#x} ({})", f.join(", "))
    }
}

/// CMIC bits.
pub const CMIC: &[(u32, &str)] = &[
    (0, "multi-port"),
    (1, "multi-controller"),
    (2, "SR-IOV virtual function"),
    (3, "ANA reporting"),
];

/// OAES bits.
pub const OAES: &[(u32, &str)] = &[
    (8, "namespace attribute notices"),
    (9, "firmware activation notices"),
    (11, "ANA change notices"),
    (12, "predictable latency event aggregate"),
    (13, "LBA status information"),
    (14, "endurance group event aggregate"),
    (15, "normal NVM subsystem shutdown"),
    (27, "discovery log page change"),
];

/// OACS bits.
pub const OACS: &[(u32, &str)] = &[
    (0, "Security Send/Receive"),
    (1, "Format NVM"),
    (2, "Firmware Download/Commit"),
    (3, "Namespace Management"),
    (4, "Device Self-test"),
    (5, "Directives"),
    (6, "NVMe-MI Send/Receive"),
    (7, "Virtualization Management"),
    (8, "Doorbell Buffer Config"),
    (9, "Get LBA Status"),
    (10, "Command and Feature Lockdown"),
];

/// ONCS bits.
pub const ONCS: &[(u32, &str)] = &[
    (0, "Compare"),
    (1, "Write Uncorrectable"),
    (2, "Dataset Management"),
    (3, "Write Zeroes"),
    (4, "Save/Select in Features"),
    (5, "Reservations"),
    (6, "Timestamp"),
    (7, "Verify"),
    (8, "Copy"),
];

/// ANACAP bits.
pub const ANACAP: &[(u32, &str)] = &[
    (0, "optimized"),
    (1, "non-optimized"),
    (2, "inaccessible"),
    (3, "persistent loss"),
    (4, "change"),
    (6, "ANAGRPID fixed while attached"),
    (7, "non-zero ANAGRPID in Namespace Management"),
];

/// LPA bits.
pub const LPA: &[(u32, &str)] = &[
    (0, "SMART per namespace"),
    (1, "Commands Supported and Effects"),
    (2, "extended Get Log Page"),
    (3, "telemetry"),
    (4, "persistent event log"),
];

/// NSFEAT bits.
pub const NSFEAT: &[(u32, &str)] = &[
    (0, "thin provisioning"),
    (1, "NAWUN/NAWUPF/NACWU"),
    (2, "deallocated or unwritten block error"),
    (3, "NGUID/EUI64 never reused"),
    (4, "NPWG/NPWA/NPDG/NPDA/NOWS"),
];

/// SGLS decoded (NVMe 2.0 figure 275).
pub fn sgls(raw: u32) -> Vec<String> {
    let mut v = match raw & 3 {
        0 => return vec!["not supported".into()],
        1 => vec!["supported (no alignment requirement)".to_string()],
        2 => vec!["supported (dword aligned)".to_string()],
        _ => vec!["reserved support value 3".to_string()],
    };
    let more = [
        (2, "keyed SGL data block"),
        (16, "bit bucket"),
        (17, "byte-aligned metadata buffer"),
        (18, "data larger than transfer length"),
        (19, "single-descriptor MPTR"),
        (20, "address as offset"),
        (21, "transport SGL data block"),
    ];
    v.extend(flags(u64::from(raw & !3), &more));
    v
}

/// The VER field: `1.4.0`, or `not reported` for 0 (NVMe 1.0 controllers).
pub fn version(ver: u32) -> String {
    if ver == 0 {
        return "not reported".into();
    }
    format!("{}.{}.{}", ver >> 16, (ver >> 8) & 0xff, ver & 0xff)
}

/// Controller type.
pub fn cntrltype(t: u8) -> &'static str {
    match t {
        0 => "not reported",
        1 => "I/O controller",
        2 => "discovery controller",
        3 => "administrative controller",
        _ => "reserved",
    }
}

/// Bytes in binary units: `512 B`, `1.00 GiB`.
pub fn human_bytes(b: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

/// A 128-bit little-endian capacity field.
pub fn u128_le(b: &[u8; 16]) -> u128 {
    u128::from_le_bytes(*b)
}

/// Bytes as lower-case hex without separators.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The IEEE OUI (stored least significant byte first): `52:54:00`.
pub fn oui(ieee: &[u8; 3]) -> String {
    format!("{:02x}:{:02x}:{:02x}", ieee[2], ieee[1], ieee[0])
}

/// RFC 4122 text form.
pub fn uuid(b: &[u8; 16]) -> String {
    let h = hex(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Kelvin as `343 K (70 °C)`, or `not reported` for 0.
pub fn kelvin(k: u16) -> String {
    if k == 0 {
        "not reported".into()
    } else {
        format!("{k} K ({} °C)", i32::from(k) - 273)
    }
}

/// What deallocated blocks read as (DLFEAT bits 2:0).
pub fn dlfeat(d: u8) -> &'static str {
    match d & 7 {
        0 => "not reported",
        1 => "all bytes 0x00",
        2 => "all bytes 0xff",
        _ => "reserved",
    }
}

/// The identifiers of a namespace, from Identify Namespace and the descriptor list:
/// `(eui64, nguid, uuid, csi)`, each only when reported and non-zero.
pub fn ns_ids(
    id: &IdentifyNamespace,
    descs: &[NsIdentifier],
) -> (Option<String>, Option<String>, Option<String>, Option<u8>) {
    let nz = |b: &[u8]| b.iter().any(|&x| x != 0);
    let mut eui = nz(&id.eui64).then(|| hex(&id.eui64));
    let mut nguid = nz(&id.nguid).then(|| hex(&id.nguid));
    let mut uid = None;
    let mut csi = None;
    for d in descs {
        match d {
            NsIdentifier::Eui64(b) if nz(b) => eui = Some(hex(b)),
            NsIdentifier::Nguid(b) if nz(b) => nguid = Some(hex(b)),
            NsIdentifier::Uuid(b) if nz(b) => uid = Some(uuid(b)),
            NsIdentifier::Csi(c) => csi = Some(*c),
            _ => {}
        }
    }
    (eui, nguid, uid, csi)
}

/// Relative performance of an LBA format.
pub fn rp(rp: u8) -> &'static str {
    match rp & 3 {
        0 => "best",
        1 => "better",
        2 => "good",
        _ => "degraded",
    }
}

/// Whether the MDTS limit applies, in bytes.
pub fn mdts_text(id: &IdentifyController, mps_min: u64) -> String {
    match id.mdts_bytes(mps_min) {
        None => "0 (no limit)".into(),
        Some(b) => format!(
            "{} ({} per command, 2^{} x {} pages)",
            id.mdts,
            human_bytes(b.into()),
            id.mdts,
            human_bytes(mps_min.into())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders() {
        assert_eq!(
            flags_text(0xa, CMIC),
            "0xa (multi-controller, ANA reporting)"
        );
        assert_eq!(flags_text(0, CMIC), "0x0 (none)");
        assert_eq!(
            flags(1 << 8 | 1 << 15, OACS),
            ["Doorbell Buffer Config", "bit 15"]
        );
        assert_eq!(version(0x0001_0400), "1.4.0");
        assert_eq!(version(0x0002_0100), "2.1.0");
        assert_eq!(version(0), "not reported");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1 << 30), "1.00 GiB");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(sgls(0), ["not supported"]);
        assert_eq!(
            sgls(1 | 1 << 16),
            ["supported (no alignment requirement)", "bit bucket"]
        );
        assert_eq!(oui(&[0x00, 0x54, 0x52]), "52:54:00");
        assert_eq!(
            uuid(&[0x4e, 0x56, 0x4d, 0x45, 0x52, 0x49, 0x47, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            "4e564d45-5249-4700-0000-000000000001"
        );
        assert_eq!(kelvin(343), "343 K (70 °C)");
        assert_eq!(dlfeat(0x9), "all bytes 0x00");
        let mut id = IdentifyController::default();
        assert_eq!(mdts_text(&id, 4096), "0 (no limit)");
        id.mdts = 5;
        assert_eq!(
            mdts_text(&id, 4096),
            "5 (128.00 KiB per command, 2^5 x 4.00 KiB pages)"
        );
        let ns = IdentifyNamespace {
            eui64: [0, 0x52, 0x49, 0x47, 0, 0, 0, 1],
            ..Default::default()
        };
        let (e, n, u, c) = ns_ids(&ns, &[NsIdentifier::Uuid([1; 16]), NsIdentifier::Csi(0)]);
        assert_eq!(e.as_deref(), Some("0052494700000001"));
        assert_eq!(n, None, "all-zero NGUID is not reported");
        assert_eq!(u.as_deref(), Some("01010101-0101-0101-0101-010101010101"));
        assert_eq!(c, Some(0));
    }
}
