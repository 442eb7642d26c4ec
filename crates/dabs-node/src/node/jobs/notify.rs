//! Telling a submitter its job is done (R-JOB-4): a POST of the result's JSON to an `http://`
//! notify URL, or a `JOB_DONE` (system command 26) carrying the same JSON to an MP client's
//! `mp://HOST:PORT/QUEUE`. Tried three times; a failure is logged and noted, and the result
//! stays at its address for the submitter to fetch.

use super::super::Inner;
use super::result_json;
use crate::jobs::Notify;
use dabs_farm_proto::jobs::TaskResult;
use dabs_net::Addr;
use dabs_wire::SystemCommand;
use std::time::Duration;

const ATTEMPTS: u32 = 3;
const WAIT: Duration = Duration::from_secs(5);

impl Inner {
    pub(super) async fn notify_done(&self, id: &str, to: &str, results: &[TaskResult]) {
        let body = result_json(id, results, false).to_string();
        let Ok(target) = to.parse::<Notify>() else { return };
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let sent = match &target {
                Notify::Http(url) => post(url, body.clone()).await,
                Notify::Mp(addr, queue) => self.send_job_done(*addr, *queue, body.clone().into_bytes()).await,
            };
            match sent {
                Ok(()) => {
                    tracing::info!(job = %id, %to, "submitter told");
                    return;
                }
                Err(e) => last = e,
            }
        }
        self.note(format!("job {id}: could not tell {to} it is done: {last}"));
    }

    async fn send_job_done(
        &self,
        addr: std::net::SocketAddr,
        queue: u16,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let session = tokio::time::timeout(WAIT, self.endpoint.open(Addr::Udp(addr), queue, Vec::new()))
            .await
            .map_err(|_| format!("no session with {addr} in {WAIT:?}"))?
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(WAIT, session.call(SystemCommand::JobDone.number(), body)).await;
        let _ = session.close_confirmed(Duration::from_secs(1)).await;
        answer
            .map_err(|_| format!("{addr} did not answer JOB_DONE in {WAIT:?}"))?
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

async fn post(url: &str, body: String) -> Result<(), String> {
    let client = reqwest::Client::builder().timeout(WAIT).build().map_err(|e| e.to_string())?;
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() { Ok(()) } else { Err(format!("{url} answered {}", response.status())) }
}
