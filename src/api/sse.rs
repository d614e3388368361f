//! The SSE responder every stream uses: `id:` + `data:` frames with no `event:` name, a
//! `: ping` comment after 15 s without a frame, and the headers proxies need.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::Responder;
use actix_web_lab::sse::{Data, Event, Sse};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use crate::actors::SessionEvent;
use crate::auth::revocation::RevocationWatch;
use crate::domain::frames::{FrameSet, seed_frame};
use crate::metrics::{Metrics, SseClientGuard};

pub const PING_EVERY: Duration = Duration::from_secs(15);

/// One Server-Sent Event as it goes on the wire: `id:` (the event id; send it back as
/// `Last-Event-ID`) and `data:` (a `StreamFrame` as JSON). No `event:` name is sent; a
/// `: ping` comment follows 15 s without an event.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // the document's shape of what `respond` writes; never built as a value
pub struct SseEvent {
    /// The event id, an integer.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// A `StreamFrame`, as JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// Frames from `events` until the turn's last one, with pings while idle. The stream ends at
/// once when `revoked` resolves (its key was revoked or its user deleted). `frames` = `Seed`
/// leaves out the frames the seed's clients do not know and cuts the rest to its five keys.
pub fn respond(
    events: mpsc::Receiver<Arc<SessionEvent>>,
    stop_after_outcome: bool,
    frames: FrameSet,
    metrics: Arc<Metrics>,
    revoked: RevocationWatch,
) -> impl Responder {
    let stream = EventStream {
        events,
        revoked,
        frames,
        ping: Box::pin(tokio::time::sleep(PING_EVERY)),
        stop_after_outcome,
        done: false,
        _counted: Some(SseClientGuard::new(metrics)),
    };
    Sse::from_stream(stream).customize().insert_header(("X-Accel-Buffering", "no"))
}

struct EventStream {
    events: mpsc::Receiver<Arc<SessionEvent>>,
    revoked: RevocationWatch,
    frames: FrameSet,
    ping: Pin<Box<Sleep>>,
    stop_after_outcome: bool,
    done: bool,
    /// Counts this stream among the open SSE clients while it lives.
    _counted: Option<SseClientGuard>,
}

impl Stream for EventStream {
    type Item = Result<Event, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if Pin::new(&mut self.revoked).poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        loop {
            match self.events.poll_recv(cx) {
                Poll::Ready(Some(event)) => {
                    self.ping.as_mut().reset(Instant::now() + PING_EVERY);
                    if self.stop_after_outcome && event.outcome.is_some() {
                        self.done = true;
                    }
                    let json = match self.frames {
                        // ByteString clones share the bytes: no copy per client.
                        FrameSet::Full => event.json.clone(),
                        FrameSet::Seed => match seed_frame(&event.json) {
                            Some(json) => json.into(),
                            None if self.done => return Poll::Ready(None),
                            None => continue,
                        },
                    };
                    let data = Data::new(json).id(event.id.to_string());
                    return Poll::Ready(Some(Ok(Event::Data(data))));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        match self.ping.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.ping.as_mut().reset(Instant::now() + PING_EVERY);
                Poll::Ready(Some(Ok(Event::Comment("ping".into()))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn stream(events: mpsc::Receiver<Arc<SessionEvent>>) -> EventStream {
        EventStream {
            events,
            revoked: RevocationWatch::never(),
            frames: FrameSet::Full,
            ping: Box::pin(tokio::time::sleep(PING_EVERY)),
            stop_after_outcome: true,
            done: false,
            _counted: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_goes_out_after_15_idle_seconds_and_frames_carry_ids() {
        let (tx, rx) = mpsc::channel(4);
        let mut s = stream(rx);
        tx.send(Arc::new(SessionEvent { id: 7, turn_id: "t".into(), json: "{}".into(), outcome: None })).await.unwrap();
        match s.next().await {
            Some(Ok(Event::Data(_))) => {}
            other => panic!("a data frame first, got {other:?}"),
        }
        let before = Instant::now();
        match s.next().await {
            Some(Ok(Event::Comment(text))) => assert_eq!(&*text, "ping"),
            other => panic!("a ping, got {other:?}"),
        }
        assert!(before.elapsed() >= PING_EVERY, "not before 15 s of silence");
        drop(tx);
        assert!(s.next().await.is_none(), "the stream ends with its sender");
    }
}
