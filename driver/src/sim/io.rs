//! NVM command set I/O commands (NVM Command Set 2.0 §3): Read, Write, Compare, Flush, Write
//! Zeroes and Dataset Management. Checks run in the order a device would: opcode, namespace, ANA
//! state, LBA range, transfer size, then PRPs.

use crate::spec::cmd::NvmOpcode;
use crate::spec::status::{generic, media, sct};
use crate::spec::{Sqe, Status};

use super::engine::{dma_in, dnr, Reply, INVALID_FIELD, INVALID_NS, INVALID_OPCODE};
use super::ns::Namespace;
use super::prp;
use super::queue::Sq;
use super::SimController;

const LBA_OUT_OF_RANGE: Status = dnr(sct::GENERIC, generic::LBA_OUT_OF_RANGE);
const COMPARE_FAILURE: Status = Status::new(sct::MEDIA, media::COMPARE_FAILURE);

impl SimController {
    /// Executes an I/O command.
    #[inline]
    pub(crate) fn io_cmd(&self, sq: &mut Sq, sqe: &Sqe) -> Reply {
        if sqe.fuse() != 0 || sqe.psdt() != 0 {
            return Reply::err(INVALID_FIELD);
        }
        let r = match NvmOpcode(sqe.opcode()) {
            NvmOpcode::READ | NvmOpcode::WRITE | NvmOpcode::COMPARE => self.rw(sq, sqe),
            NvmOpcode::FLUSH => self.flush(sqe),
            NvmOpcode::WRITE_ZEROES => self.write_zeroes(sqe),
            NvmOpcode::DSM => self.dsm(sq, sqe),
            _ => Err(INVALID_OPCODE),
        };
        match r {
            Ok(()) => Reply::ok(0),
            Err(s) => Reply::err(s),
        }
    }

    /// The namespace of an I/O command, if it exists and this path may reach it.
    #[inline]
    fn io_ns(&self, nsid: u32) -> Result<&Namespace, Status> {
        let ns = self.shared.ns(nsid).ok_or(INVALID_NS)?;
        if self.shared.cfg.ana {
            if let Some(s) = self.ana_status(nsid) {
                return Err(s);
            }
        }
        Ok(ns)
    }

    #[inline]
    fn rw(&self, sq: &mut Sq, sqe: &Sqe) -> Result<(), Status> {
        let ns = self.io_ns(sqe.nsid)?;
        let slba = sqe.slba();
        let nlb = u64::from(sqe.nlb_0b()) + 1;
        if !ns.in_range(slba, nlb) {
            return Err(LBA_OUT_OF_RANGE);
        }
        let len = nlb << ns.lba_shift;
        if len > self.mdts_bytes() {
            return Err(INVALID_FIELD);
        }
        let len = len as usize;
        prp::walk(
            &mut sq.view,
            sqe.prp1,
            sqe.prp2,
            len,
            sq.page_shift,
            &mut sq.segs,
        )?;
        let off = ns.byte_offset(slba);
        match NvmOpcode(sqe.opcode()) {
            NvmOpcode::READ => {
                ns.read_to(off, &sq.view, &sq.segs);
                sq.stats.host_reads += 1;
                sq.stats.bytes_read += len as u64;
            }
            NvmOpcode::WRITE => {
                ns.write_from(off, &sq.view, &sq.segs);
                sq.stats.host_writes += 1;
                sq.stats.bytes_written += len as u64;
            }
            _ => {
                sq.stats.host_reads += 1;
                if !ns.compare(off, &sq.view, &sq.segs) {
                    return Err(COMPARE_FAILURE);
                }
            }
        }
        Ok(())
    }

    fn flush(&self, sqe: &Sqe) -> Result<(), Status> {
        if sqe.nsid == u32::MAX {
            return Ok(());
        }
        self.io_ns(sqe.nsid).map(|_| ())
    }

    fn write_zeroes(&self, sqe: &Sqe) -> Result<(), Status> {
        let ns = self.io_ns(sqe.nsid)?;
        let slba = sqe.slba();
        let nlb = u64::from(sqe.nlb_0b()) + 1;
        if !ns.in_range(slba, nlb) {
            return Err(LBA_OUT_OF_RANGE);
        }
        // With or without DEAC: deallocated blocks read as zeroes here.
        ns.zero(slba, nlb);
        Ok(())
    }

    fn dsm(&self, sq: &mut Sq, sqe: &Sqe) -> Result<(), Status> {
        let ns = self.io_ns(sqe.nsid)?;
        let nr = (sqe.cdw10 & 0xff) as usize + 1;
        let mut buf = [0u8; 256 * 16];
        let ranges = &mut buf[..nr * 16];
        dma_in(sq, sqe, ranges)?;
        let deallocate = sqe.cdw11 & (1 << 2) != 0;
        if !deallocate {
            return Ok(());
        }
        let parse = |r: &[u8]| {
            let nlb = u64::from(u32::from_le_bytes([r[4], r[5], r[6], r[7]]));
            let mut s = [0u8; 8];
            s.copy_from_slice(&r[8..16]);
            (u64::from_le_bytes(s), nlb)
        };
        if ranges
            .chunks_exact(16)
            .map(parse)
            .any(|(slba, nlb)| !ns.in_range(slba, nlb))
        {
            return Err(LBA_OUT_OF_RANGE);
        }
        for (slba, nlb) in ranges.chunks_exact(16).map(parse) {
            if nlb > 0 {
                ns.zero(slba, nlb);
            }
        }
        Ok(())
    }
}
