//! The smallest useful Verge function: answers every request with a greeting.
//! It is a standard `wasi:http/incoming-handler` component, so the same
//! `.wasm` also runs on `wasmtime serve` and Spin.

use std::io::Write;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

wasip2::http::proxy::export!(Hello);

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
            .expect("static header is valid");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let mut stream = body.write().expect("stream is taken once");
        stream
            .write_all(b"Hello, world!\n")
            .expect("client went away");
        drop(stream);
        OutgoingBody::finish(body, None).expect("body finished once");
    }
}
