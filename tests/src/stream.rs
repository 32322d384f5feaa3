//! A steady stream of client requests in the background, recording every outcome.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Outcome {
    /// 0 when the request failed without a response.
    pub status: u16,
    pub body: String,
    pub latency: Duration,
}

pub struct Stream {
    stop: Arc<AtomicBool>,
    pub outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Stream {
    /// `clients` loops of `method` requests to `addr`, one at a time each.
    pub fn start(addr: SocketAddr, method: &'static str, clients: usize) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, outcomes) = (stop.clone(), outcomes.clone());
                tokio::spawn(async move {
                    // Bounded: a stream never outlives its test by more than a minute.
                    let end = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                        let t = Instant::now();
                        let r = crate::request(addr, method, "app", "/", &[], "").await;
                        let o = match r {
                            Ok(r) => Outcome {
                                status: r.status,
                                body: r.body,
                                latency: t.elapsed(),
                            },
                            Err(e) => Outcome {
                                status: 0,
                                body: e.to_string(),
                                latency: t.elapsed(),
                            },
                        };
                        outcomes.lock().unwrap().push(o);
                    }
                })
            })
            .collect();
        Stream {
            stop,
            outcomes,
            tasks,
        }
    }

    pub fn count(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    /// Stops the loops and returns every outcome.
    pub async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        let v = self.outcomes.lock().unwrap().clone();
        v
    }
}

/// The outcomes that were not a 200.
pub fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| o.status != 200).collect()
}
