//! A request's log scope: the request id, tenant, proxy and route that every log line emitted
//! while serving the request carries, without a `tracing` span per request.
//!
//! A `tracing` span per request cost about 8% of the gateway's CPU on the hot path
//! (`loadtests/README.md`): the subscriber's registry looked the span up on every enter and
//! exit (every poll of every instrumented future) and the log layer formatted its fields into
//! a string at creation and on each `record`, for log lines a healthy request never writes.
//! A [`Scope`] is instead a shared record set as this thread's current one while the
//! request's work is polled ([`Scope::instrument`], [`Scope::enter`]); the log formats here
//! ([`Text`], [`Json`]) read it only when a line is written. Work for the request that runs
//! outside its handler (the provider actor's call, a stream's relay) takes the scope along.

use crate::config::Proxy;
use std::cell::Cell;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Json as JsonFormat, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// What a request's log lines name: its id, then, as the request learns them, its proxy (and
/// so its tenant) once found and its route once routed (both from configuration).
#[derive(Debug)]
struct Fields {
    request_id: Box<str>,
    names: Mutex<Names>,
}

#[derive(Debug, Default)]
struct Names {
    proxy: Option<Arc<Proxy>>,
    /// Index into the proxy's routes.
    route: Option<usize>,
}

thread_local! {
    /// The scope whose work this thread is running, if any.
    static CURRENT: Cell<Option<Arc<Fields>>> = const { Cell::new(None) };
}

/// A request's log scope (the default scope names no request).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    fields: Option<Arc<Fields>>,
}

impl Scope {
    /// A new request's scope.
    pub fn new(request_id: &str) -> Self {
        Self {
            fields: Some(Arc::new(Fields {
                request_id: request_id.into(),
                names: Mutex::default(),
            })),
        }
    }

    /// The scope this thread is running in.
    pub fn current() -> Self {
        Self {
            fields: CURRENT.with(|current| {
                let fields = current.take();
                current.set(fields.clone());
                fields
            }),
        }
    }

    fn names(&self, f: impl FnOnce(&mut Names)) {
        if let Some(fields) = &self.fields {
            f(&mut fields.names.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// The request is for `proxy` (of an authenticated tenant).
    pub fn set_proxy(&self, proxy: &Arc<Proxy>) {
        self.names(|n| n.proxy = Some(proxy.clone()));
    }

    /// The request was routed to the route at `index` of its proxy.
    pub fn set_route(&self, index: usize) {
        self.names(|n| n.route = Some(index));
    }

    /// Makes this scope current until the guard is dropped.
    pub fn enter(&self) -> Entered {
        Entered {
            previous: CURRENT.replace(self.fields.clone()),
        }
    }

    /// `future`, polled in this scope.
    pub fn instrument<F: Future>(self, future: F) -> Scoped<F> {
        Scoped {
            future,
            scope: self,
        }
    }
}

/// A [`Scope`] made current by [`Scope::enter`]; dropping it restores the one before.
pub struct Entered {
    previous: Option<Arc<Fields>>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.set(self.previous.take());
    }
}

pin_project_lite::pin_project! {
    /// A future polled in a [`Scope`] ([`Scope::instrument`]).
    pub struct Scoped<F> {
        #[pin]
        future: F,
        scope: Scope,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // The scope's record is moved into the thread-local for the poll and back after it,
        // not cloned: a request's futures are polled many times, and each clone and drop of
        // the `Arc` would be an atomic increment and decrement.
        let _lent = Lent {
            previous: CURRENT.replace(this.scope.fields.take()),
            home: &mut this.scope.fields,
        };
        this.future.poll(cx)
    }
}

/// A [`Scoped`] future's record while it is current: put back when the poll ends (or
/// unwinds), and the previous one made current again.
struct Lent<'a> {
    home: &'a mut Option<Arc<Fields>>,
    previous: Option<Arc<Fields>>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        *self.home = CURRENT.replace(self.previous.take());
    }
}

/// Calls `f` with the current scope's fields as `(name, value)` pairs, those known so far.
fn with_current_fields<R>(f: impl FnOnce(&[(&str, &str)]) -> R) -> Option<R> {
    CURRENT.with(|current| {
        // Taken for the look-up and put back; nothing here makes another scope current.
        let taken = current.take();
        let out = taken.as_ref().map(|fields| {
            let names = fields.names.lock().unwrap_or_else(|e| e.into_inner());
            let mut pairs: Vec<(&str, &str)> = vec![("request_id", &fields.request_id)];
            if let Some(proxy) = &names.proxy {
                pairs.push(("tenant", &proxy.tenant));
                pairs.push(("proxy", &proxy.id));
                if let Some(route) = names.route.and_then(|i| proxy.routes.get(i)) {
                    pairs.push(("route", &route.name));
                }
            }
            f(&pairs)
        });
        current.set(taken);
        out
    })
}

/// The human-readable log line: tracing-subscriber's full format, with the current request's
/// scope where a request span's fields would be: `TIME LEVEL request{request_id=… tenant=…
/// proxy=… route=…}: target: message fields`.
pub struct Text {
    /// Writes the spans, the target and the fields (time and level are written here).
    rest: Format<Full, ()>,
}

impl Default for Text {
    fn default() -> Self {
        Self {
            rest: tracing_subscriber::fmt::format()
                .without_time()
                .with_level(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let ansi = writer.has_ansi_escapes();
        if ansi {
            writer.write_str("\x1b[2m")?;
        }
        SystemTime.format_time(&mut writer)?;
        if ansi {
            writer.write_str("\x1b[0m")?;
        }
        let level = *event.metadata().level();
        match (ansi, level_color(level)) {
            (true, color) => write!(writer, " \x1b[{color}m{level:>5}\x1b[0m ")?,
            (false, _) => write!(writer, " {level:>5} ")?,
        }
        with_current_fields(|fields| {
            writer.write_str(if ansi {
                "\x1b[1mrequest{\x1b[0m"
            } else {
                "request{"
            })?;
            for (i, (name, value)) in fields.iter().enumerate() {
                let sep = if i == 0 { "" } else { " " };
                if ansi {
                    write!(writer, "{sep}\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m{value}")?;
                } else {
                    write!(writer, "{sep}{name}={value}")?;
                }
            }
            writer.write_str(if ansi {
                "\x1b[1m}\x1b[0m\x1b[2m:\x1b[0m "
            } else {
                "}: "
            })
        })
        .unwrap_or(Ok(()))?;
        self.rest.format_event(ctx, writer, event)
    }
}

/// tracing-subscriber's colours for the levels.
fn level_color(level: Level) -> u8 {
    match level {
        Level::TRACE => 35,
        Level::DEBUG => 34,
        Level::INFO => 32,
        Level::WARN => 33,
        Level::ERROR => 31,
    }
}

/// The JSON log line: tracing-subscriber's JSON format with the current request's scope as
/// top-level keys (`"request_id"`, `"tenant"`, `"proxy"`, `"route"`) before the others.
pub struct Json(Format<JsonFormat>);

impl Default for Json {
    fn default() -> Self {
        Self(tracing_subscriber::fmt::format().json())
    }
}

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The line is one JSON object: the scope's keys go in right after its `{`.
        let Some(rest) = line.strip_prefix('{') else {
            return writer.write_str(&line);
        };
        let mut scoped = String::new();
        with_current_fields(|fields| {
            for (name, value) in fields {
                // A string always serialises.
                let value = serde_json::to_string(value).unwrap_or_default();
                let _ = write!(scoped, "\"{name}\":{value},");
            }
        });
        write!(writer, "{{{scoped}{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(scope: &Scope) -> Option<Vec<(String, String)>> {
        let _entered = scope.enter();
        with_current_fields(|f| {
            f.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        })
    }

    #[test]
    fn a_scope_is_current_only_while_entered_and_names_what_it_learnt() {
        assert_eq!(with_current_fields(|f| f.len()), None);
        let scope = Scope::new("req-1");
        assert_eq!(
            pairs(&scope),
            Some(vec![("request_id".into(), "req-1".into())])
        );
        let inner = Scope::new("req-2");
        {
            let _outer = scope.enter();
            assert_eq!(pairs(&inner).map(|p| p[0].1.clone()), Some("req-2".into()));
            // Leaving the inner scope restores the outer one.
            assert_eq!(
                with_current_fields(|f| f[0].1.to_owned()),
                Some("req-1".into())
            );
        }
        assert_eq!(with_current_fields(|f| f.len()), None);
        assert_eq!(pairs(&Scope::default()), None);
    }

    #[actix_web::test]
    async fn an_instrumented_future_runs_in_its_scope_on_every_poll() {
        let scope = Scope::new("req-3");
        let seen = scope
            .instrument(async {
                let first = with_current_fields(|f| f[0].1.to_owned());
                tokio::task::yield_now().await;
                let second = with_current_fields(|f| f[0].1.to_owned());
                // A nested scope is current inside, on every poll, and the outer one after.
                let nested = Scope::new("req-4")
                    .instrument(async {
                        tokio::task::yield_now().await;
                        with_current_fields(|f| f[0].1.to_owned())
                    })
                    .await;
                let after = Scope::current().fields.map(|f| f.request_id.to_string());
                (first, second, nested, after)
            })
            .await;
        assert_eq!(
            seen,
            (
                Some("req-3".into()),
                Some("req-3".into()),
                Some("req-4".into()),
                Some("req-3".into())
            )
        );
        assert_eq!(with_current_fields(|f| f.len()), None);
    }
}
