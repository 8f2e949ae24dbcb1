//! Semantic search with recommendations, on Verge's `verge:ai` host API.
//!
//! - `POST /index`: embeds the documents below (one batch) and stores them
//!   in the `docs` vector index; searching indexes them first if needed.
//! - `GET /search?q=TEXT[&k=N][&topic=T]`: the documents closest in meaning
//!   to the query, optionally only one topic.
//! - `GET /similar/ID[?k=N]`: "more like this": the documents closest to
//!   document ID, itself left out.
//! - `GET /classify?q=TEXT`: the query's topic, zero-shot, by similarity to
//!   the topic names.
//!
//! Answers are JSON. The WIT comes from Verge's `wit/` folder.

use std::io::Write;

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wit_bindgen::generate!({
    path: "../../wit/deps/ai",
    world: "verge:ai/imports",
    generate_all,
});

use verge::ai::vectors::{Index, Match};
use verge::ai::{classify, embeddings, types::Error};

/// (id, topic, text)
const DOCS: &[(&str, &str, &str)] = &[
    (
        "rocket-launch",
        "space",
        "A rocket needs enough speed to reach orbit around the Earth.",
    ),
    (
        "mars-rover",
        "space",
        "The rover drove across the dusty red surface of Mars collecting rock samples.",
    ),
    (
        "telescope",
        "space",
        "The space telescope captured images of distant galaxies and nebulae.",
    ),
    (
        "moon-landing",
        "space",
        "Astronauts walked on the Moon and planted a flag in 1969.",
    ),
    (
        "pasta",
        "cooking",
        "Boil the pasta in salted water and toss it with garlic, olive oil and basil.",
    ),
    (
        "bread",
        "cooking",
        "Knead the dough, let it rise for an hour, then bake the bread until golden.",
    ),
    (
        "curry",
        "cooking",
        "Simmer the chicken curry with coconut milk, ginger and spices.",
    ),
    (
        "salad",
        "cooking",
        "A fresh salad of tomatoes, cucumber and feta with a lemon dressing.",
    ),
    (
        "world-cup",
        "sports",
        "The football team won the World Cup after a penalty shootout.",
    ),
    (
        "marathon",
        "sports",
        "She ran the marathon in under three hours after months of training.",
    ),
    (
        "tennis",
        "sports",
        "The tennis final went to five sets before the champion won.",
    ),
    (
        "basketball",
        "sports",
        "He scored forty points as the basketball team won the championship.",
    ),
    (
        "sql-index",
        "software",
        "Adding an index to the database table made the SQL query much faster.",
    ),
    (
        "rust-borrow",
        "software",
        "The Rust compiler's borrow checker prevents data races at compile time.",
    ),
    (
        "kubernetes",
        "software",
        "Kubernetes schedules containers across a cluster of machines.",
    ),
    (
        "git-merge",
        "software",
        "Resolve the merge conflict, then commit the changes to the git branch.",
    ),
    (
        "violin",
        "music",
        "The violinist played a concerto with the symphony orchestra.",
    ),
    (
        "guitar",
        "music",
        "He learned three chords on the guitar and wrote his first song.",
    ),
    (
        "jazz",
        "music",
        "The jazz band improvised a long saxophone solo late into the night.",
    ),
    (
        "piano",
        "music",
        "Practising scales on the piano every day improves finger technique.",
    ),
];

/// (topic, description): zero-shot labels work best as short descriptions.
const TOPICS: &[(&str, &str)] = &[
    ("space", "space exploration, planets, rockets and astronomy"),
    ("cooking", "cooking, recipes, food and meals"),
    ("sports", "sports, athletes, matches and competitions"),
    ("software", "software, programming, computers and databases"),
    ("music", "music, musicians, songs and instruments"),
];

struct Search;

wasip2::http::proxy::export!(Search);

impl wasip2::exports::http::incoming_handler::Guest for Search {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
        let result = match (request.method(), path) {
            (Method::Post, "/index") => index_all().map(|n| format!("{{\"indexed\":{n}}}")),
            (Method::Get, "/search") => search(query),
            (Method::Get, "/classify") => classify_query(query),
            (Method::Get, p) if p.starts_with("/similar/") => {
                similar(&p["/similar/".len()..], query)
            }
            _ => Err((
                404,
                "no such route: use /search, /similar/ID, /classify or POST /index".into(),
            )),
        };
        match result {
            Ok(json) => respond(out, 200, &json),
            Err((status, message)) => {
                respond(out, status, &format!("{{\"error\":{}}}", quote(&message)))
            }
        }
    }
}

type Reply = Result<String, (u16, String)>;

/// Maps a host error to a status: bad input is the client's fault, a
/// missing model the operator's.
fn failed(e: Error) -> (u16, String) {
    match e {
        Error::AccessDenied => (
            500,
            "access denied: declare the model and index in verge.toml".into(),
        ),
        Error::Invalid(m) => (400, m),
        Error::Limited(secs) => (429, format!("over the AI limit; retry in {secs} s")),
        Error::Unavailable(m) => (503, m),
        Error::Other(m) => (500, m),
    }
}

fn docs() -> Result<Index, (u16, String)> {
    Index::open("docs").map_err(failed)
}

/// Embeds every document and stores it; returns how many.
fn index_all() -> Result<usize, (u16, String)> {
    let index = docs()?;
    let texts: Vec<String> = DOCS.iter().map(|(_, _, text)| text.to_string()).collect();
    let embedded = embeddings::embed(&texts).map_err(failed)?;
    for ((id, topic, _), vector) in DOCS.iter().zip(&embedded.vectors) {
        let metadata = vec![("topic".to_string(), topic.to_string())];
        index.upsert(id, vector, &metadata).map_err(failed)?;
    }
    Ok(DOCS.len())
}

fn ready_index() -> Result<Index, (u16, String)> {
    let index = docs()?;
    if index.count().map_err(failed)? < DOCS.len() as u64 {
        index_all()?;
    }
    Ok(index)
}

fn search(query: &str) -> Reply {
    let q = param(query, "q").ok_or((400, "give a query: /search?q=TEXT".to_string()))?;
    let k = k_param(query)?;
    let filter: Vec<(String, String)> = param(query, "topic")
        .map(|t| vec![("topic".to_string(), t)])
        .unwrap_or_default();
    let index = ready_index()?;
    let embedded = embeddings::embed(std::slice::from_ref(&q)).map_err(failed)?;
    let matches = index
        .query(&embedded.vectors[0], k, &filter)
        .map_err(failed)?;
    Ok(format!(
        "{{\"query\":{},\"truncated\":{},\"results\":{}}}",
        quote(&q),
        !embedded.truncated.is_empty(),
        results(&matches)
    ))
}

fn similar(id: &str, query: &str) -> Reply {
    let k = k_param(query)?;
    let index = ready_index()?;
    let Some(vector) = index.get(id).map_err(failed)? else {
        return Err((404, format!("no document {id}")));
    };
    let matches = index.query(&vector, k + 1, &[]).map_err(failed)?;
    let others: Vec<Match> = matches
        .into_iter()
        .filter(|m| m.id != id)
        .take(k as usize)
        .collect();
    Ok(format!(
        "{{\"like\":{},\"results\":{}}}",
        quote(id),
        results(&others)
    ))
}

fn classify_query(query: &str) -> Reply {
    let q = param(query, "q").ok_or((400, "give a text: /classify?q=TEXT".to_string()))?;
    let labels: Vec<String> = TOPICS.iter().map(|(_, d)| d.to_string()).collect();
    let ranked = classify::classify(&q, &labels).map_err(failed)?;
    let topic = |description: &str| {
        TOPICS
            .iter()
            .find(|(_, d)| *d == description)
            .map_or("", |(t, _)| *t)
    };
    let scores: Vec<String> = ranked
        .iter()
        .map(|l| {
            format!(
                "{{\"label\":{},\"score\":{:.4}}}",
                quote(topic(&l.label)),
                l.score
            )
        })
        .collect();
    Ok(format!(
        "{{\"label\":{},\"scores\":[{}]}}",
        quote(topic(&ranked[0].label)),
        scores.join(",")
    ))
}

fn results(matches: &[Match]) -> String {
    let items: Vec<String> = matches
        .iter()
        .map(|m| {
            let topic = m
                .metadata
                .iter()
                .find(|(k, _)| k == "topic")
                .map_or("", |(_, v)| v.as_str());
            format!(
                "{{\"id\":{},\"topic\":{},\"score\":{:.4}}}",
                quote(&m.id),
                quote(topic),
                m.score
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn k_param(query: &str) -> Result<u32, (u16, String)> {
    match param(query, "k") {
        None => Ok(3),
        Some(k) => match k.parse::<u32>() {
            Ok(k @ 1..=20) => Ok(k),
            _ => Err((400, "k must be 1 to 20".into())),
        },
    }
}

/// The percent-decoded value of `name` in a query string (`+` is a space).
/// Bytes that do not decode to UTF-8 are replaced, never passed on.
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            let mut bytes = Vec::with_capacity(v.len());
            let mut it = v.bytes();
            while let Some(b) = it.next() {
                match b {
                    b'+' => bytes.push(b' '),
                    b'%' => {
                        let hex: Vec<u8> = it.by_ref().take(2).collect();
                        match std::str::from_utf8(&hex)
                            .ok()
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                        {
                            Some(decoded) => bytes.push(decoded),
                            None => bytes.extend_from_slice(b"%"),
                        }
                    }
                    _ => bytes.push(b),
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    })
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn respond(out: ResponseOutparam, status: u16, body: &str) {
    let headers = Fields::from_list(&[("content-type".into(), b"application/json".to_vec())])
        .expect("static header is valid");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = outgoing.write().expect("stream is taken once");
    stream.write_all(body.as_bytes()).expect("client went away");
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("body finished once");
}
