use super::*;

#[test]
#[ignore]
fn null_read_cost() {
    let sub = SimSubsystem::builder()
        .controllers(1)
        .namespace(crate::sim::NsConfig::null(1, 1 << 30))
        .build();
    let mut h = Host::new(sub.controller(0));
    h.create_pair(1, 1024);
    let buf = h.buf(4096);
    let p1 = h.iova(&buf, 0);
    let ring = h.rings.remove(&1).unwrap();
    let ctrl = h.ctrl.clone();
    let mut tail = 0u32;
    let mut head = 0u32;
    let mut phase = true;
    let batch = 32u32;
    let n = 4_000_000u32;
    let mut sqe = Sqe::read(1, 0, 0);
    sqe.prp1 = p1;
    let t0 = Instant::now();
    let mut done = 0;
    while done < n {
        for i in 0..batch {
            sqe.set_cid(i as u16);
            sqe.cdw10 = (done + i) % 1000;
            ring.sq.write(tail as usize * 64, sqe.as_bytes());
            tail = (tail + 1) % 1024;
        }
        ctrl.write32(sq_tail_doorbell(1, 0), tail);
        let mut got = 0;
        while got < batch {
            let dw3 = ring.cq.load_u32_acquire(head as usize * 16 + 12);
            if ((dw3 >> 16) & 1 != 0) != phase {
                ctrl.idle_poll();
                continue;
            }
            head += 1;
            if head == 1024 {
                head = 0;
                phase = !phase;
            }
            got += 1;
        }
        ctrl.write32(cq_head_doorbell(1, 0), head);
        done += batch;
    }
    let el = t0.elapsed();
    eprintln!(
        "{} cmds in {:?}: {:.1} ns/cmd",
        n,
        el,
        el.as_nanos() as f64 / n as f64
    );
}
