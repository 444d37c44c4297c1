//! The human and JSON renderings of a [`SubsysEntry`] list.
//!
//! JSON structure (stable: fields are only ever added):
//!
//! ```text
//! { "subsystems": [ { "subnqn", "controllers": [ {controller} ], "namespaces": [ {namespace} ] } ] }
//! controller: name, vid, ssvid, sn, mn, fr, ieee_oui, cntlid, version, cntrltype,
//!   cmic {raw, flags}, mdts, mdts_bytes (null: unlimited), oaes, ctratt, oacs {raw, flags},
//!   acl, aerl, frmw, lpa {raw, flags}, elpe, npss, wctemp_k, cctemp_k, kas_ms, anatt_s,
//!   anacap {raw, flags}, anagrpmax, nanagrpid, crdt_ms [3], cqt_ms, sqes, cqes, nn,
//!   oncs {raw, flags}, fuses, vwc, sgls {raw, flags}, tnvmcap, unvmcap, subnqn,
//!   cap {mqes, max_queue_entries, timeout_ms, dstrd, doorbell_stride, mps_min, mps_max, css,
//!        nssrs, cqr}, driver {io_queues, shadow_doorbells, max_transfer}
//! namespace: nsid, controllers [names], nsze, ncap, nuse, block_size, size_bytes,
//!   nsfeat {raw, flags}, nlbaf, flbas, lba_format, extended_metadata,
//!   lba_formats [{index, data_size, metadata_size, rp, in_use}], nmic, shared, rescap,
//!   dlfeat, nvmcap, anagrpid, nsattr, write_protected, nguid, eui64, uuid, csi
//! ```
//! Byte strings (nguid, eui64) are lower-case hex; absent identifiers are null.

use std::fmt::Write as _;

use serde_json::{json, Value};
use vfnvme::spec::identify::IdentifyController;

use super::decode::{self as d, flags, flags_text};
use super::{CtrlEntry, NsEntry, SubsysEntry};

fn bits(raw: u64, table: &[(u32, &str)]) -> Value {
    json!({ "raw": raw, "flags": flags(raw, table) })
}

/// The JSON document.
pub fn json(subs: &[SubsysEntry]) -> Value {
    json!({
        "subsystems": subs.iter().map(|s| json!({
            "subnqn": s.subnqn,
            "controllers": s.ctrls.iter().map(ctrl_json).collect::<Vec<_>>(),
            "namespaces": s.namespaces.iter().map(ns_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn ctrl_json(c: &CtrlEntry) -> Value {
    let info = c.ctrl.info();
    let id: &IdentifyController = &info.identify;
    let cap = info.cap;
    let mut v = json!({
        "name": c.name,
        "vid": id.vid,
        "ssvid": id.ssvid,
        "sn": id.serial(),
        "mn": id.model(),
        "fr": id.firmware(),
        "ieee_oui": d::oui(&id.ieee),
        "cntlid": id.cntlid,
        "version": d::version(id.ver),
        "cntrltype": id.cntrltype,
        "cmic": bits(id.cmic.into(), d::CMIC),
        "mdts": id.mdts,
        "mdts_bytes": id.mdts_bytes(cap.mps_min_bytes()),
        "rtd3r_us": id.rtd3r,
        "rtd3e_us": id.rtd3e,
        "oaes": bits(id.oaes.into(), d::OAES),
        "ctratt": id.ctratt,
        "oacs": bits(id.oacs.into(), d::OACS),
        "acl": id.acl,
        "aerl": id.aerl,
        "frmw": id.frmw,
        "lpa": bits(id.lpa.into(), d::LPA),
        "elpe": id.elpe,
        "npss": id.npss,
        "wctemp_k": id.wctemp,
        "cctemp_k": id.cctemp,
        "kas_ms": id.kas_ms(),
        "anatt_s": id.anatt,
    });
    let rest = json!({
        "anacap": bits(id.anacap.into(), d::ANACAP),
        "anagrpmax": id.anagrpmax,
        "nanagrpid": id.nanagrpid,
        "crdt_ms": [id.crdt_ms(1), id.crdt_ms(2), id.crdt_ms(3)],
        "cqt_ms": id.cqt_ms(),
        "sqes": id.sqes,
        "cqes": id.cqes,
        "nn": id.nn,
        "oncs": bits(id.oncs.into(), d::ONCS),
        "fuses": id.fuses,
        "vwc": id.vwc,
        "sgls": { "raw": id.sgls, "flags": d::sgls(id.sgls) },
        "tnvmcap": d::u128_le(&id.tnvmcap).to_string(),
        "unvmcap": d::u128_le(&id.unvmcap).to_string(),
        "subnqn": id.subnqn(),
        "cap": {
            "mqes": cap.mqes(),
            "max_queue_entries": cap.max_queue_entries(),
            "timeout_ms": cap.timeout_ms(),
            "dstrd": cap.dstrd(),
            "doorbell_stride": cap.doorbell_stride_bytes(),
            "mps_min": cap.mps_min_bytes(),
            "mps_max": cap.mps_max_bytes(),
            "css": cap.css(),
            "nssrs": cap.nssrs(),
            "cqr": cap.cqr(),
        },
        "driver": {
            "io_queues": info.io_queues,
            "shadow_doorbells": info.shadow_doorbells,
            "max_transfer": (info.mdts_bytes != u64::MAX).then_some(info.mdts_bytes),
        },
    });
    if let (Some(m), Value::Object(r)) = (v.as_object_mut(), rest) {
        m.extend(r);
    }
    v
}

fn ns_json(e: &NsEntry) -> Value {
    let id = &e.ns.identify;
    let (eui, nguid, uuid, csi) = d::ns_ids(id, &e.ns.ids);
    let n = usize::from(id.nlbaf) + 1;
    json!({
        "nsid": e.nsid,
        "controllers": e.ctrls,
        "nsze": id.nsze,
        "ncap": id.ncap,
        "nuse": id.nuse,
        "block_size": id.lba_size_bytes(),
        "size_bytes": u128::from(id.nsze) * u128::from(id.lba_size_bytes()),
        "nsfeat": bits(id.nsfeat.into(), d::NSFEAT),
        "nlbaf": id.nlbaf,
        "flbas": id.flbas,
        "lba_format": id.lba_format_index(),
        "extended_metadata": id.extended_metadata(),
        "lba_formats": id.lbaf.iter().take(n.min(64)).enumerate().map(|(i, f)| json!({
            "index": i,
            "data_size": if (9..=31).contains(&f.lbads) { 1u64 << f.lbads } else { 0 },
            "metadata_size": f.ms,
            "rp": f.rp & 3,
            "in_use": i == id.lba_format_index(),
        })).collect::<Vec<_>>(),
        "nmic": id.nmic,
        "shared": id.shared(),
        "rescap": id.rescap,
        "dlfeat": id.dlfeat,
        "nvmcap": d::u128_le(&id.nvmcap).to_string(),
        "anagrpid": id.anagrpid,
        "nsattr": id.nsattr,
        "write_protected": id.nsattr & 1 != 0,
        "nguid": nguid,
        "eui64": eui,
        "uuid": uuid,
        "csi": csi,
    })
}

struct Lines(String);

impl Lines {
    fn kv(&mut self, k: &str, v: impl std::fmt::Display) {
        let _ = writeln!(self.0, "    {k:<10}: {v}");
    }
}

/// The human report.
pub fn text(subs: &[SubsysEntry]) -> String {
    let mut l = Lines(String::new());
    for (i, s) in subs.iter().enumerate() {
        if i > 0 {
            l.0.push('\n');
        }
        let names: Vec<&str> = s.ctrls.iter().map(|c| c.name.as_str()).collect();
        let _ = writeln!(
            l.0,
            "NVM subsystem {}\n  controllers: {}\n  namespaces : {}",
            if s.subnqn.is_empty() {
                "(no SUBNQN reported)"
            } else {
                &s.subnqn
            },
            names.join(", "),
            if s.namespaces.is_empty() {
                "none".to_string()
            } else {
                s.namespaces
                    .iter()
                    .map(|n| n.nsid.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        for c in &s.ctrls {
            ctrl_text(&mut l, c);
        }
        for n in &s.namespaces {
            ns_text(&mut l, n, s.ctrls.len());
        }
    }
    l.0
}

fn ctrl_text(l: &mut Lines, c: &CtrlEntry) {
    let info = c.ctrl.info();
    let id = &info.identify;
    let cap = info.cap;
    let _ = writeln!(l.0, "\n  Controller {} (cntlid {})", c.name, id.cntlid);
    l.kv("vid", format!("{:#06x}", id.vid));
    l.kv("ssvid", format!("{:#06x}", id.ssvid));
    l.kv("sn", id.serial());
    l.kv("mn", id.model());
    l.kv("fr", id.firmware());
    l.kv("ieee", d::oui(&id.ieee));
    l.kv("cntlid", format!("{} ({:#x})", id.cntlid, id.cntlid));
    l.kv("ver", d::version(id.ver));
    l.kv(
        "cntrltype",
        format!("{} ({})", id.cntrltype, d::cntrltype(id.cntrltype)),
    );
    l.kv("cmic", flags_text(id.cmic.into(), d::CMIC));
    l.kv("mdts", d::mdts_text(id, cap.mps_min_bytes()));
    l.kv("oaes", flags_text(id.oaes.into(), d::OAES));
    l.kv("ctratt", format!("{:#x}", id.ctratt));
    l.kv("oacs", flags_text(id.oacs.into(), d::OACS));
    l.kv(
        "acl",
        format!("{} ({} concurrent Aborts)", id.acl, u16::from(id.acl) + 1),
    );
    l.kv(
        "aerl",
        format!("{} ({} outstanding AERs)", id.aerl, u16::from(id.aerl) + 1),
    );
    l.kv(
        "frmw",
        format!(
            "{:#x} ({} slots{}{})",
            id.frmw,
            (id.frmw >> 1) & 7,
            if id.frmw & 1 != 0 {
                ", slot 1 read-only"
            } else {
                ""
            },
            if id.frmw & 0x10 != 0 {
                ", activation without reset"
            } else {
                ""
            }
        ),
    );
    l.kv("lpa", flags_text(id.lpa.into(), d::LPA));
    l.kv(
        "elpe",
        format!("{} ({} error log entries)", id.elpe, u16::from(id.elpe) + 1),
    );
    l.kv(
        "npss",
        format!("{} ({} power states)", id.npss, u16::from(id.npss) + 1),
    );
    l.kv("wctemp", d::kelvin(id.wctemp));
    l.kv("cctemp", d::kelvin(id.cctemp));
    l.kv(
        "kas",
        if id.kas == 0 {
            "0 (keep alive not supported)".to_string()
        } else {
            format!("{} ({} ms granularity)", id.kas, id.kas_ms())
        },
    );
    l.kv(
        "anacap",
        flags_text(id.anacap.into(), d::ANACAP)
            + if id.ana_reporting() {
                ""
            } else {
                " [ANA reporting not supported]"
            },
    );
    l.kv("anatt", format!("{} s", id.anatt));
    l.kv("anagrpmax", id.anagrpmax);
    l.kv("nanagrpid", id.nanagrpid);
    l.kv(
        "crdt1-3",
        format!(
            "{} ms, {} ms, {} ms",
            id.crdt_ms(1),
            id.crdt_ms(2),
            id.crdt_ms(3)
        ),
    );
    l.kv(
        "cqt",
        if id.cqt == 0 {
            "0 (not reported)".to_string()
        } else {
            format!("{} ms", id.cqt_ms())
        },
    );
    l.kv(
        "sqes",
        format!(
            "{:#x} ({} B required, {} B max)",
            id.sqes,
            1u32 << (id.sqes & 0xf),
            1u32 << (id.sqes >> 4)
        ),
    );
    l.kv(
        "cqes",
        format!(
            "{:#x} ({} B required, {} B max)",
            id.cqes,
            1u32 << (id.cqes & 0xf),
            1u32 << (id.cqes >> 4)
        ),
    );
    l.kv("nn", id.nn);
    l.kv("oncs", flags_text(id.oncs.into(), d::ONCS));
    l.kv(
        "fuses",
        format!(
            "{:#x}{}",
            id.fuses,
            if id.fuses & 1 != 0 {
                " (Compare and Write)"
            } else {
                " (none)"
            }
        ),
    );
    l.kv(
        "vwc",
        format!(
            "{:#x} (volatile write cache {})",
            id.vwc,
            if id.vwc & 1 != 0 {
                "present"
            } else {
                "not present"
            }
        ),
    );
    l.kv(
        "sgls",
        format!("{:#x} ({})", id.sgls, d::sgls(id.sgls).join(", ")),
    );
    let tnvm = d::u128_le(&id.tnvmcap);
    if tnvm != 0 {
        l.kv("tnvmcap", format!("{tnvm} ({})", d::human_bytes(tnvm)));
        let u = d::u128_le(&id.unvmcap);
        l.kv("unvmcap", format!("{u} ({})", d::human_bytes(u)));
    }
    l.kv("subnqn", id.subnqn());
    l.kv(
        "CAP",
        format!(
            "MQES {} entries, TO {} ms, DSTRD {} ({} B), MPS {}..{}, CSS {:#x}{}",
            cap.max_queue_entries(),
            cap.timeout_ms(),
            cap.dstrd(),
            cap.doorbell_stride_bytes(),
            d::human_bytes(cap.mps_min_bytes().into()),
            d::human_bytes(cap.mps_max_bytes().into()),
            cap.css(),
            if cap.cqr() {
                ", contiguous queues required"
            } else {
                ""
            }
        ),
    );
    l.kv(
        "vfnvme",
        format!(
            "{} I/O queue pairs granted, shadow doorbells {}, max transfer {}",
            info.io_queues,
            if info.shadow_doorbells {
                "in use"
            } else {
                "not used"
            },
            if info.mdts_bytes == u64::MAX {
                "unlimited".to_string()
            } else {
                d::human_bytes(info.mdts_bytes.into())
            }
        ),
    );
}

fn blocks(n: u64, lba: u64) -> String {
    format!(
        "{n} blocks ({})",
        d::human_bytes(u128::from(n) * u128::from(lba))
    )
}

fn ns_text(l: &mut Lines, e: &NsEntry, nctrls: usize) {
    let id = &e.ns.identify;
    let lba = id.lba_size_bytes();
    let reach = if e.ctrls.len() == nctrls && nctrls > 1 {
        format!("all {nctrls} controllers: {}", e.ctrls.join(", "))
    } else {
        e.ctrls.join(", ")
    };
    let _ = writeln!(l.0, "\n  Namespace {} (on {reach})", e.nsid);
    l.kv("nsze", blocks(id.nsze, lba));
    l.kv("ncap", blocks(id.ncap, lba));
    l.kv("nuse", blocks(id.nuse, lba));
    l.kv("nsfeat", flags_text(id.nsfeat.into(), d::NSFEAT));
    l.kv(
        "nlbaf",
        format!("{} ({} formats)", id.nlbaf, u16::from(id.nlbaf) + 1),
    );
    l.kv(
        "flbas",
        format!(
            "{:#x} (format {}{})",
            id.flbas,
            id.lba_format_index(),
            if id.extended_metadata() {
                ", metadata at the end of each block"
            } else {
                ""
            }
        ),
    );
    l.kv(
        "nmic",
        format!(
            "{:#x} ({})",
            id.nmic,
            if id.shared() {
                "shared: may be attached to several controllers"
            } else {
                "private"
            }
        ),
    );
    l.kv("rescap", format!("{:#x}", id.rescap));
    l.kv(
        "dlfeat",
        format!(
            "{:#x} (deallocated blocks read as {})",
            id.dlfeat,
            d::dlfeat(id.dlfeat)
        ),
    );
    let nvmcap = d::u128_le(&id.nvmcap);
    if nvmcap != 0 {
        l.kv("nvmcap", format!("{nvmcap} ({})", d::human_bytes(nvmcap)));
    }
    l.kv("anagrpid", id.anagrpid);
    l.kv(
        "nsattr",
        format!(
            "{:#x}{}",
            id.nsattr,
            if id.nsattr & 1 != 0 {
                " (write protected)"
            } else {
                ""
            }
        ),
    );
    let (eui, nguid, uuid, csi) = d::ns_ids(id, &e.ns.ids);
    l.kv("nguid", nguid.unwrap_or_else(|| "not reported".into()));
    l.kv("eui64", eui.unwrap_or_else(|| "not reported".into()));
    l.kv("uuid", uuid.unwrap_or_else(|| "not reported".into()));
    if let Some(c) = csi {
        l.kv(
            "csi",
            format!("{c} ({})", if c == 0 { "NVM" } else { "other" }),
        );
    }
    let in_use = id.lba_format_index();
    for (i, f) in id.lbaf.iter().enumerate().take(usize::from(id.nlbaf) + 1) {
        let size = if (9..=31).contains(&f.lbads) {
            d::human_bytes(1u128 << f.lbads)
        } else {
            format!("invalid LBADS {}", f.lbads)
        };
        l.kv(
            &format!("lbaf {i}"),
            format!(
                "data {size}, metadata {} B, performance {}{}",
                f.ms,
                d::rp(f.rp),
                if i == in_use { "  <== in use" } else { "" }
            ),
        );
    }
}
