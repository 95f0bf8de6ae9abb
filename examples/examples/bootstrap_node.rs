//! A long-running bootstrap node: the well-known address other nodes join through.
//!
//! A bootstrap node is an ordinary native node (signed JSON-RPC over UDP) that runs for a long
//! time at an address people know. This one also carries the pub/sub plugin, so sensors and
//! their subscribers can meet at it (see `sensor_publisher` and `sensor_subscriber`).
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p kad-examples --example bootstrap_node -- --listen udp://127.0.0.1:4000 --for 60
//! ```
//!
//! Flags: `--listen ADDR` (default `udp://127.0.0.1:0`, a free port) and `--for SECS` (stop after
//! that long; by default it runs until Ctrl-C).
//!
//! The first line on stdout is the node's address alone (e.g. `udp://127.0.0.1:4000`), so a
//! script can read it and pass it to others as `--bootstrap`. Then `id: NODE_ID`, and on exit a
//! summary ending in `ok: bootstrap_node served N requests`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use kad::{NativeNode, PeerAddr};

#[derive(Parser)]
struct Args {
    /// Where to listen: udp://IP:PORT (port 0 picks a free one).
    #[arg(long, default_value = "udp://127.0.0.1:0")]
    listen: PeerAddr,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long = "for", value_name = "SECS")]
    for_secs: Option<f64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let run_for = args.for_secs.map(Duration::try_from_secs_f64).transpose();
    let run_for = run_for.context("--for: expected a number of seconds")?;
    let PeerAddr::Udp(listen) = args.listen else {
        bail!(
            "--listen {}: this example listens on udp:// only",
            args.listen
        );
    };

    // A fresh identity each run. A real bootstrap node keeps its key in a file, so its id
    // stays the same across restarts (`.key_file(PATH)`, `kad node --key-file`). It is a
    // rendezvous node for pub/sub topics too.
    let dht = NativeNode::builder().udp(listen).pubsub().build().await?;

    // The address first, alone on its line: scripts read it.
    println!("{}", dht.contact().addrs[0]);
    println!("id: {}", dht.id());

    // Nothing to join: the others come to us. Wait for Ctrl-C or the end of --for.
    let stop = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        () = stop => {}
    }

    let stats = dht.stats().await?;
    let known = dht.snapshot().await?.contacts.len();
    dht.shutdown().await;
    println!("knows {known} node(s)");
    println!("ok: bootstrap_node served {} requests", stats.requests_in);
    Ok(())
}
