//! Arbitrary bytes as everything the driver decodes from a device: identify data, namespace
//! descriptor lists, NSID lists, ANA logs, CQEs and async-event dwords. Decoding must reject what
//! is malformed, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfnvme::spec::identify::{
    parse_ns_descriptors, parse_nsid_list, IdentifyController, IdentifyNamespace,
};
use vfnvme::spec::log::{parse_ana_log, AsyncEvent};
use vfnvme::spec::{Cqe, Status};
use zerocopy::FromBytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = IdentifyController::read_from_prefix(data).map(|(v, _)| v) {
        let _ = (id.subnqn(), id.serial(), id.model(), id.mdts_bytes(4096));
        for crd in 0..=3 {
            let _ = id.crdt_ms(crd);
        }
    }
    if let Ok(ns) = IdentifyNamespace::read_from_prefix(data).map(|(v, _)| v) {
        let _ = (ns.lba_size_bytes(), ns.metadata_size(), ns.lba_format_index());
    }
    let _ = parse_ns_descriptors(data);
    let _ = parse_nsid_list(data);
    if let Ok((_, groups)) = parse_ana_log(data) {
        for g in groups {
            let _ = (g.state.name(), g.state.is_usable());
        }
    }
    if let Ok((cqe, _)) = Cqe::read_from_prefix(data) {
        let st: Status = cqe.status();
        let _ = (st.name(), st.to_string(), cqe.phase());
    }
    if data.len() >= 4 {
        let dw0 = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let e = AsyncEvent::from_dw0(dw0);
        assert_eq!(AsyncEvent::from_dw0(e.to_dw0()).to_dw0(), e.to_dw0());
    }
});
