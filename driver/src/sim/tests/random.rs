//! Seeded property test: arbitrary SQEs on the admin and an I/O queue always complete with some
//! status, never panic the device, and leave it able to serve a correct write and read.

use std::cell::RefCell;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::*;

/// Fields of an SQE, some drawn from "interesting" values so that commands get past the first
/// checks and into the PRP walker and handlers.
#[derive(Clone, Debug)]
struct Input {
    admin: bool,
    dwords: [u32; 16],
    opcode: Option<u8>,
    nsid_one: bool,
    prp1: Option<(u32, bool)>,
    prp2: Option<(u32, bool)>,
}

fn input() -> impl Strategy<Value = Input> {
    let known = prop::sample::select(vec![
        0x00u8, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0a, 0x0c, 0x18, 0x7c, 0x00, 0x01, 0x02,
        0x05, 0x08, 0x09,
    ]);
    (
        any::<bool>(),
        prop::array::uniform16(any::<u32>()),
        prop::option::of(known),
        any::<bool>(),
        prop::option::of((0u32..65536, any::<bool>())),
        prop::option::of((0u32..65536, any::<bool>())),
    )
        .prop_map(|(admin, dwords, opcode, nsid_one, prp1, prp2)| Input {
            admin,
            dwords,
            opcode,
            nsid_one,
            prp1,
            prp2,
        })
}

#[test]
fn random_sqes_always_complete_and_the_device_keeps_working() {
    // Arrange
    let sub = SimSubsystem::builder()
        .controllers(1)
        .namespace(crate::sim::NsConfig::ram(1, 1 << 20))
        .build();
    let mut h = Host::new(sub.controller(0));
    h.create_pair(1, 64);
    // A region of its own: a stray transfer cannot reach the rings.
    let scratch = h.buf(4 << 20);
    let scratch_iova = h.iova(&scratch, 0);
    let host = RefCell::new(h);
    let config = Config {
        cases: 4000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));

    // Act
    let result = runner.run(&input(), |inp| {
        let mut h = host.borrow_mut();
        let mut sqe = Sqe::default();
        zerocopy::IntoBytes::as_mut_bytes(&mut sqe)
            .copy_from_slice(zerocopy::IntoBytes::as_bytes(&inp.dwords));
        if let Some(op) = inp.opcode {
            sqe.set_opcode(op);
        }
        if inp.nsid_one {
            sqe.nsid = 1;
        }
        let pick = |p: Option<(u32, bool)>, raw: u64| match p {
            // Inside the scratch buffer: page aligned or with a dword offset.
            Some((off, aligned)) => {
                let off = u64::from(off) & if aligned { !0xfff } else { !0x3 };
                scratch_iova + off
            }
            None => raw,
        };
        sqe.prp1 = pick(inp.prp1, sqe.prp1);
        sqe.prp2 = pick(inp.prp2, sqe.prp2);
        let qid = if inp.admin { 0 } else { 1 };
        if inp.admin {
            // Keep the harness's own queue and doorbells intact.
            let op = sqe.opcode();
            if matches!(op, 0x00 | 0x04) && sqe.cdw10 as u16 == 1 {
                sqe.cdw10 = (sqe.cdw10 & !0xffff) | 2;
            }
            if op == 0x7c {
                sqe.set_opcode(0x7d);
            }
        }
        let cid = h.submit(qid, sqe);
        let aer = inp.admin && sqe.opcode() == 0x0c;
        match h.try_wait(qid, cid, Duration::from_secs(2)) {
            Some(c) => {
                prop_assert_eq!(c.sqid, qid);
            }
            None => prop_assert!(
                aer,
                "opcode {:#x} on queue {} never completed",
                sqe.opcode(),
                qid
            ),
        }
        prop_assert!(h.ctrl.csts().rdy() && !h.csts().cfs());
        Ok(())
    });

    // Assert
    result.unwrap();
    let mut h = host.into_inner();
    let data = h.buf(8192);
    fill_pattern(&data, 42);
    let back = h.buf(8192);
    let w = h.io(1, Sqe::write(1, 64, 15), &data, 0, 8192);
    let r = h.io(1, Sqe::read(1, 64, 15), &back, 0, 8192);
    assert!(w.status().is_success() && r.status().is_success());
    assert!(data.equal(0, &back, 0, 8192));
    assert!(h.ctrl.stats().commands >= 4000);
}
