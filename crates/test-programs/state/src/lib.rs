//! `state-programs`: a wasi:http component that drives Verge's state and
//! configuration host APIs from the request, for the end-to-end tests.
//! The route's last path segment picks the operation; query parameters
//! (percent-encoded) give its arguments; errors come back as
//! `500 <error>` so tests can assert on the guest-visible error.
//!
//! - `/kv-open?store=S[&repeat=N]`: opens the store (N times): `ok` or the error.
//! - `/kv-get?store=S&key=K`: the value, or 404.
//! - `/kv-set?store=S&key=K`: stores the request body.
//! - `/kv-delete`, `/kv-exists`: as named.
//! - `/kv-incr?store=S&key=K&delta=N`: the new counter value.
//! - `/kv-list?store=S[&cursor=N]`: one key per line, then `cursor: N|none`.
//! - `/kv-set-many?store=S&prefix=P&n=N&size=B`: sets N keys of B bytes in one batch.
//! - `/kv-get-many?store=S&keys=a,b`: `key=value` or `key missing` per line.
//! - `/kv-delete-many?store=S&keys=a,b`.
//! - `/config-get?key=K`: the variable or secret, or 404.
//! - `/config-all`: `name=value` per line.
//! - `/secret-check?name=N`: 200 if header `x-api-key` equals secret N, else 401.
//! - `/log?level=L&context=C&message=M`: logs through wasi:logging.
//! - `/ai-embed?n=N&(text=T|size=W)`: embeds N copies of T (or W words):
//!   `vectors=N dims=D tokens=T truncated=i,j`; `/ai-embed-body` embeds the
//!   request body as one text, `/ai-embed-lines` each of its lines;
//!   `/ai-dimensions`.
//! - `/ai-upsert?index=I&id=ID&(text=T|vector=1,2,..)&meta=k:v`,
//!   `/ai-query?index=I&text=T&k=K&filter=k:v` (`id score` lines),
//!   `/ai-delete?index=I&id=ID`, `/ai-count?index=I`.
//! - `/ai-classify?text=T&labels=a,b`: `label score` lines, best first;
//!   `/ai-classify-with?classifier=C&text=T` the same with a trained one.

use std::io::{Read, Write};

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "verge:platform/host-apis",
    generate_all,
});

use verge::ai;
use wasi::config::store as config;
use wasi::keyvalue::{atomics, batch, store};
use wasi::logging::logging;

struct Guest;

wasip2::http::proxy::export!(Guest);

impl wasip2::exports::http::incoming_handler::Guest for Guest {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = match path_with_query.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (path_with_query.clone(), String::new()),
        };
        let route = path.rsplit('/').next().unwrap_or("").to_string();
        let q = |name: &str| param(&query, name);
        let result = match route.as_str() {
            "kv-open" => {
                let repeat: usize = q("repeat").parse().unwrap_or(1);
                let mut result = Ok((200, b"ok".to_vec()));
                for _ in 0..repeat {
                    result = open(&q("store")).map(|_| (200, b"ok".to_vec()));
                }
                result
            }
            "kv-get" => open(&q("store")).and_then(|b| match b.get(&q("key")) {
                Ok(Some(v)) => Ok((200, v)),
                Ok(None) => Ok((404, b"missing".to_vec())),
                Err(e) => Err(describe(&e)),
            }),
            "kv-set" => {
                let body = read_body(request);
                open(&q("store"))
                    .and_then(|b| b.set(&q("key"), &body).map_err(|e| describe(&e)))
                    .map(|()| (204, Vec::new()))
            }
            "kv-delete" => open(&q("store"))
                .and_then(|b| b.delete(&q("key")).map_err(|e| describe(&e)))
                .map(|()| (204, Vec::new())),
            "kv-exists" => open(&q("store"))
                .and_then(|b| b.exists(&q("key")).map_err(|e| describe(&e)))
                .map(|e| (200, e.to_string().into_bytes())),
            "kv-incr" => open(&q("store")).and_then(|b| {
                let delta = q("delta").parse().unwrap_or(1);
                atomics::increment(&b, &q("key"), delta)
                    .map(|n| (200, n.to_string().into_bytes()))
                    .map_err(|e| describe(&e))
            }),
            "kv-list" => open(&q("store")).and_then(|b| {
                let cursor = q("cursor").parse().ok();
                let page = b.list_keys(cursor).map_err(|e| describe(&e))?;
                let mut text = String::new();
                for k in page.keys {
                    text.push_str(&k);
                    text.push('\n');
                }
                match page.cursor {
                    Some(c) => text.push_str(&format!("cursor: {c}\n")),
                    None => text.push_str("cursor: none\n"),
                }
                Ok((200, text.into_bytes()))
            }),
            "kv-set-many" => open(&q("store")).and_then(|b| {
                let n: usize = q("n").parse().unwrap_or(1);
                let size: usize = q("size").parse().unwrap_or(1);
                let prefix = q("prefix");
                let items: Vec<(String, Vec<u8>)> = (0..n)
                    .map(|i| (format!("{prefix}{i}"), vec![b'x'; size]))
                    .collect();
                batch::set_many(&b, &items)
                    .map(|()| (204, Vec::new()))
                    .map_err(|e| describe(&e))
            }),
            "kv-get-many" => open(&q("store")).and_then(|b| {
                let keys: Vec<String> = q("keys").split(',').map(String::from).collect();
                let values = batch::get_many(&b, &keys).map_err(|e| describe(&e))?;
                let mut text = String::new();
                for (k, v) in keys.iter().zip(values) {
                    match v {
                        Some((_, v)) => {
                            text.push_str(&format!("{k}={}\n", String::from_utf8_lossy(&v)))
                        }
                        None => text.push_str(&format!("{k} missing\n")),
                    }
                }
                Ok((200, text.into_bytes()))
            }),
            "kv-delete-many" => open(&q("store")).and_then(|b| {
                let keys: Vec<String> = q("keys").split(',').map(String::from).collect();
                batch::delete_many(&b, &keys)
                    .map(|()| (204, Vec::new()))
                    .map_err(|e| describe(&e))
            }),
            "config-get" => match config::get(&q("key")) {
                Ok(Some(v)) => Ok((200, v.into_bytes())),
                Ok(None) => Ok((404, b"unset".to_vec())),
                Err(e) => Err(format!("{e:?}")),
            },
            "config-all" => config::get_all()
                .map(|all| {
                    let text: String = all.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                    (200, text.into_bytes())
                })
                .map_err(|e| format!("{e:?}")),
            "secret-check" => {
                let given = request
                    .headers()
                    .get("x-api-key")
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                match config::get(&q("name")) {
                    Ok(Some(secret)) if secret.as_bytes() == given.as_slice() => {
                        Ok((200, b"authorised".to_vec()))
                    }
                    Ok(_) => Ok((401, b"wrong key".to_vec())),
                    Err(e) => Err(format!("{e:?}")),
                }
            }
            "log" => {
                let level = match q("level").as_str() {
                    "trace" => logging::Level::Trace,
                    "debug" => logging::Level::Debug,
                    "warn" => logging::Level::Warn,
                    "error" => logging::Level::Error,
                    "critical" => logging::Level::Critical,
                    _ => logging::Level::Info,
                };
                let repeat: usize = q("repeat").parse().unwrap_or(1);
                for _ in 0..repeat {
                    logging::log(level, &q("context"), &q("message"));
                }
                Ok((204, Vec::new()))
            }
            "ai-embed" => {
                // n texts: `text`, or `size` words when no text is given.
                let n: usize = q("n").parse().unwrap_or(1);
                let size: usize = q("size").parse().unwrap_or(1);
                let text = if query.contains("text=") {
                    q("text")
                } else {
                    "word ".repeat(size)
                };
                embed_report(vec![text; n])
            }
            "ai-embed-lines" => {
                let body = read_body(request);
                embed_report(
                    String::from_utf8_lossy(&body)
                        .lines()
                        .map(String::from)
                        .collect(),
                )
            }
            "ai-embed-body" => embed_report(vec![
                String::from_utf8_lossy(&read_body(request)).into_owned(),
            ]),
            "ai-dimensions" => ai::embeddings::dimensions()
                .map(|d| (200, d.to_string().into_bytes()))
                .map_err(|e| format!("{e:?}")),
            "ai-upsert" => ai_index(&q("index")).and_then(|index| {
                let vector = if query.contains("vector=") {
                    q("vector")
                        .split(',')
                        .map(|x| x.trim().parse::<f32>().unwrap_or(f32::NAN))
                        .collect()
                } else {
                    let embedded =
                        ai::embeddings::embed(&[q("text")]).map_err(|e| format!("{e:?}"))?;
                    embedded.vectors.into_iter().next().unwrap_or_default()
                };
                index
                    .upsert(&q("id"), &vector, &pairs(&q("meta")))
                    .map(|()| (204, Vec::new()))
                    .map_err(|e| format!("{e:?}"))
            }),
            "ai-query" => ai_index(&q("index")).and_then(|index| {
                let embedded = ai::embeddings::embed(&[q("text")]).map_err(|e| format!("{e:?}"))?;
                let k = q("k").parse().unwrap_or(3);
                let found = index
                    .query(&embedded.vectors[0], k, &pairs(&q("filter")))
                    .map_err(|e| format!("{e:?}"))?;
                let text: String = found
                    .iter()
                    .map(|m| format!("{} {:.4}\n", m.id, m.score))
                    .collect();
                Ok((200, text.into_bytes()))
            }),
            "ai-delete" => ai_index(&q("index")).and_then(|index| {
                index
                    .delete(&q("id"))
                    .map(|d| (200, d.to_string().into_bytes()))
                    .map_err(|e| format!("{e:?}"))
            }),
            "ai-count" => ai_index(&q("index")).and_then(|index| {
                index
                    .count()
                    .map(|n| (200, n.to_string().into_bytes()))
                    .map_err(|e| format!("{e:?}"))
            }),
            "ai-classify" => {
                let labels: Vec<String> = q("labels")
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
                ranked_lines(ai::classify::classify(&q("text"), &labels))
            }
            "ai-classify-with" => {
                ranked_lines(ai::classify::classify_with(&q("classifier"), &q("text")))
            }
            _ => Ok((200, b"state-programs\n".to_vec())),
        };
        match result {
            Ok((status, body)) => respond(out, status, &body),
            Err(e) => respond(out, 500, e.as_bytes()),
        }
    }
}

fn embed_report(texts: Vec<String>) -> Result<(u16, Vec<u8>), String> {
    let e = ai::embeddings::embed(&texts).map_err(|e| format!("{e:?}"))?;
    let dims = e.vectors.first().map_or(0, Vec::len);
    let truncated: Vec<String> = e.truncated.iter().map(u32::to_string).collect();
    Ok((
        200,
        format!(
            "vectors={} dims={dims} tokens={} truncated={}",
            e.vectors.len(),
            e.tokens,
            truncated.join(",")
        )
        .into_bytes(),
    ))
}

/// `label score` lines, best first, or the error.
fn ranked_lines(
    ranked: Result<Vec<ai::classify::LabelScore>, ai::types::Error>,
) -> Result<(u16, Vec<u8>), String> {
    let ranked = ranked.map_err(|e| format!("{e:?}"))?;
    let text: String = ranked
        .iter()
        .map(|l| format!("{} {:.4}\n", l.label, l.score))
        .collect();
    Ok((200, text.into_bytes()))
}

fn ai_index(name: &str) -> Result<ai::vectors::Index, String> {
    ai::vectors::Index::open(name).map_err(|e| format!("{e:?}"))
}

/// `k:v,k2:v2` as metadata pairs.
fn pairs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|p| p.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn open(name: &str) -> Result<store::Bucket, String> {
    store::open(name).map_err(|e| describe(&e))
}

fn describe(e: &store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no-such-store".to_string(),
        store::Error::AccessDenied => "access-denied".to_string(),
        store::Error::Other(m) => format!("other: {m}"),
    }
}

/// Query parameter `name`, percent-decoded (empty if absent).
fn param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| decode(v))
        .unwrap_or_default()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_body(request: IncomingRequest) -> Vec<u8> {
    let incoming = request.consume().expect("consume");
    let mut input = incoming.stream().expect("input stream");
    let mut body = Vec::new();
    input.read_to_end(&mut body).expect("read body");
    body
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let response = OutgoingResponse::new(Fields::new());
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = outgoing.write().expect("stream");
    for chunk in body.chunks(4096) {
        stream.write_all(chunk).expect("write body");
    }
    stream.flush().expect("flush body");
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finish body");
}
