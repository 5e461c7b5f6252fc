//! The bulkhead rejects calls beyond its limit without sending them.

use std::time::Duration;

use courier_http::HttpErrorKind;
use courier_http::client::HttpClient;
use courier_testkit::fault::{FaultPlan, FaultServer};

#[tokio::test]
async fn rejects_beyond_its_limit() {
    let server = FaultServer::start(FaultPlan::healthy().latency(Duration::from_millis(300))).await.unwrap();
    let client = HttpClient::builder(server.url()).bulkhead(2usize).build().unwrap();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("/").send().await })
        })
        .collect();
    let (mut ok, mut rejected) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.kind(), HttpErrorKind::BulkheadFull, "{e:?}");
                assert!(e.is_rejected());
                rejected += 1;
            }
        }
    }
    assert_eq!((ok, rejected), (2, 6));
    assert_eq!(server.requests(), 2, "rejected calls never reach the server");
    assert_eq!(client.bulkhead().unwrap().available(), 2, "slots are given back");
}
