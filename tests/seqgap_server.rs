//! Sequence gaps through the whole server: a frame left out of the middle of a
//! session's run moves `sequence_gaps_total` by its log count, while the logs that
//! did arrive are all delivered.

mod support;

use boundary_log_proxy::config::IoMode;
use support::coderd::FakeCoderd;
use support::faults::{delivered, frames, sample, write_frames, Proxy, PATIENCE};
use support::proxy::assert_accounting_totals;

const GAPS: &str = "agent_boundary_log_proxy_sequence_gaps_total";
const OUT_OF_ORDER: &str = "agent_boundary_log_proxy_sequence_out_of_order_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_omitted_from_a_sessions_run_shows_as_sequence_gaps() {
    let coderd = FakeCoderd::start().await;
    let (dir, config) = Proxy::config(IoMode::Auto);
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;
    assert_eq!(sample(&proxy.scrape(), GAPS), Some(0.0));

    // Session "lossy": frames of 10 logs numbered 0..50, the third one (20..30)
    // never sent. Session "whole" runs alongside without a gap.
    let lossy = frames("lossy", 0, 5, 10);
    let whole = frames("whole", 0, 5, 10);
    let mut client = proxy.connect();
    for (i, (l, w)) in lossy.iter().zip(&whole).enumerate() {
        if i != 2 {
            assert_eq!(write_frames(&mut client, std::slice::from_ref(l)), 1);
        }
        assert_eq!(write_frames(&mut client, std::slice::from_ref(w)), 1);
    }
    assert!(
        proxy.wait_settled_at(90, PATIENCE).await,
        "{:?}",
        proxy.accounting()
    );

    let text = proxy.scrape();
    assert_eq!(sample(&text, GAPS), Some(10.0), "the ten logs 20..30");
    assert_eq!(sample(&text, OUT_OF_ORDER), Some(0.0));
    let got = delivered(&coderd.requests());
    assert_eq!(got["whole"], (0..50).collect::<Vec<_>>());
    let lossy_expected: Vec<i32> = (0..20).chain(30..50).collect();
    assert_eq!(got["lossy"], lossy_expected);

    // The missing frame arriving late is out of order; the gap stays counted.
    assert_eq!(write_frames(&mut client, &lossy[2..3]), 1);
    assert!(proxy.wait_settled_at(100, PATIENCE).await);
    let text = proxy.scrape();
    assert_eq!(sample(&text, GAPS), Some(10.0));
    assert_eq!(sample(&text, OUT_OF_ORDER), Some(10.0));

    drop(client);
    let totals = proxy.close().await;
    assert_eq!(totals.forwarded, 100);
    assert_accounting_totals(totals, 0);
}
