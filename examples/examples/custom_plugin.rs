//! Extending the framework with a plugin: a new RPC method, `echo.UPPER`.
//!
//! A `kad::core::Plugin` owns a namespace (`echo`); the engine hands it every request whose
//! method starts with `echo.`, and sends back whatever `Reply` it returns. Plugins never touch
//! sockets or clocks: they see the node through `PluginCx` (its contact, time, routing table,
//! store) and may keep state of their own, like the call counter here. On the native network
//! the parameters and the result are JSON text, and every message is signed.
//!
//! Two nodes on 127.0.0.1 register the plugin; one calls it on the other with `Dht::call`.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p kad-examples --example custom_plugin
//! ```
//!
//! It prints each answer (`echo.UPPER -> {"by":...,"served":1,"text":"HELLO, PLUGIN"}`), the
//! error for a method the plugin does not have, and finally
//! `ok: custom_plugin answered "HELLO, PLUGIN"`.

use anyhow::{Result, bail, ensure};
use kad::NativeNode;
use kad::core::{Bytes, Contact, DhtError, Plugin, PluginCx, QueryError, Reply, RpcError};
use serde::Deserialize;
use serde_json::json;

/// The plugin: its state is the number of calls it served.
#[derive(Default)]
struct Echo {
    served: u64,
}

/// The parameters of `echo.UPPER`.
#[derive(Deserialize)]
struct UpperParams {
    text: String,
}

impl Plugin for Echo {
    fn namespace(&self) -> &'static str {
        "echo"
    }

    fn on_request(
        &mut self,
        cx: &mut PluginCx<'_>,
        from: &Contact,
        method: &str,
        params: &Bytes,
    ) -> Reply {
        if method != "echo.UPPER" {
            let msg = format!("echo has no method {method}");
            return Reply::Error(RpcError::new(RpcError::METHOD_NOT_FOUND, msg));
        }
        let Ok(p) = serde_json::from_slice::<UpperParams>(params) else {
            let msg = r#"echo.UPPER takes {"text": STRING}"#;
            return Reply::Error(RpcError::new(RpcError::INVALID_PARAMS, msg));
        };
        self.served += 1;
        // `from` is the caller, already authenticated by the codec (its signature checked).
        let answer = json!({
            "text": p.text.to_uppercase(),
            "served": self.served,
            "by": cx.local().id.to_hex(),
            "for": from.id.to_hex(),
        });
        Reply::Result(Bytes::from(answer.to_string()))
    }
}

/// A native node on 127.0.0.1 with the echo plugin registered.
async fn spawn_node() -> Result<NativeNode> {
    Ok(NativeNode::builder()
        .udp("127.0.0.1:0")
        .plugin(Box::new(Echo::default()))
        .build()
        .await?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = spawn_node().await?;
    let b = spawn_node().await?;
    b.bootstrap(vec![a.contact().addrs[0].clone()]).await?;
    println!("a: {}  b: {}", a.id(), b.id());

    // b calls a's plugin twice: a's counter goes up.
    let mut answers = Vec::new();
    for text in ["hello, plugin", "again"] {
        let params = Bytes::from(json!({ "text": text }).to_string());
        let result = b.call(a.contact().clone(), "echo.UPPER", params).await?;
        let answer: serde_json::Value = serde_json::from_slice(&result)?;
        println!("echo.UPPER -> {answer}");
        answers.push(answer);
    }
    let text = answers[0]["text"].clone();
    ensure!(text == "HELLO, PLUGIN", "unexpected answer {text}");
    ensure!(answers[1]["served"] == 2, "a should have served two calls");

    // A method the plugin does not know comes back as a remote error.
    let params = Bytes::from_static(b"{}");
    match b.call(a.contact().clone(), "echo.LOWER", params).await {
        Err(DhtError::Query(QueryError::Remote(e))) => println!("echo.LOWER -> {e}"),
        other => bail!("expected an error answer, got {other:?}"),
    }

    b.shutdown().await;
    a.shutdown().await;
    println!("ok: custom_plugin answered {text}");
    Ok(())
}
