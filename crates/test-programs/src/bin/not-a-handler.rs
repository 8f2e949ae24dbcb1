//! A WASI command (exports `wasi:cli/run`, not `wasi:http/incoming-handler`):
//! Verge must refuse to serve it and say what it exports instead.

fn main() {
    println!("I am a command, not an HTTP handler");
}
