//! [`MainlineBuilder`]: a Mainline node that joins by itself.

use std::net::SocketAddr;

use crate::{Mainline, MainlineConfig, MainlineError, PUBLIC_ROUTERS};

/// Builds a [`Mainline`] node and joins it to a network: the public DHT through its routers
/// ([`public_routers`](Self::public_routers), what [`Mainline::client`] and
/// [`Mainline::server`] do), or a network of your own through
/// [`bootstrap`](Self::bootstrap) addresses. Without either, the node starts a network.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), kad_plugin_bep44::MainlineError> {
/// use kad_plugin_bep44::Mainline;
///
/// let first = Mainline::builder().bind("127.0.0.1:0".parse().unwrap()).build().await?;
/// let client = Mainline::builder()
///     .bind("127.0.0.1:0".parse().unwrap())
///     .bootstrap([first.local_addr()])
///     .read_only()
///     .build()
///     .await?;
/// client.shutdown().await;
/// first.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct MainlineBuilder {
    cfg: MainlineConfig,
    names: Vec<String>,
}

impl Mainline {
    /// A builder with the defaults of [`MainlineConfig`].
    pub fn builder() -> MainlineBuilder {
        MainlineBuilder::default()
    }

    /// A read-only client of the public Mainline DHT (BEP43: it queries, never answers), joined
    /// through the public routers ([`PUBLIC_ROUTERS`]). This talks to the live Internet.
    pub async fn client() -> Result<Self, MainlineError> {
        Self::builder().public_routers().read_only().build().await
    }

    /// A server node of the public Mainline DHT on a free UDP port, joined through the public
    /// routers. This talks to the live Internet; see [`MainlineBuilder::bind`] for a fixed port.
    pub async fn server() -> Result<Self, MainlineError> {
        Self::builder().public_routers().build().await
    }
}

/// The IPv4 addresses of bootstrap nodes given as `HOST:PORT` (e.g. [`PUBLIC_ROUTERS`]). A name
/// that does not resolve, or names without any IPv4 address, are [`MainlineError::NoBootstrap`].
pub async fn resolve_bootstrap<S: AsRef<str>>(
    names: &[S],
) -> Result<Vec<SocketAddr>, MainlineError> {
    let mut out = Vec::new();
    for n in names {
        let n = n.as_ref();
        let found = tokio::net::lookup_host(n)
            .await
            .map_err(|e| MainlineError::NoBootstrap {
                reason: format!("cannot resolve {n:?} (want HOST:PORT): {e}"),
            })?;
        out.extend(found.filter(SocketAddr::is_ipv4));
    }
    if out.is_empty() && !names.is_empty() {
        let list: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
        return Err(MainlineError::NoBootstrap {
            reason: format!("no IPv4 address for {}", list.join(", ")),
        });
    }
    Ok(out)
}

impl MainlineBuilder {
    /// Every setting at once.
    pub fn config(mut self, cfg: MainlineConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// The UDP address to bind. Default `0.0.0.0:0` (any free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.cfg.bind = addr;
        self
    }

    /// Joins through these nodes.
    pub fn bootstrap(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.cfg.bootstrap.extend(addrs);
        self
    }

    /// Joins through these nodes given as `HOST:PORT`, resolved (IPv4) when built.
    pub fn bootstrap_names<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.names.extend(names.into_iter().map(Into::into));
        self
    }

    /// Joins the public DHT through [`PUBLIC_ROUTERS`] (the live Internet).
    pub fn public_routers(self) -> Self {
        self.bootstrap_names(PUBLIC_ROUTERS)
    }

    /// Read-only (BEP43): `ro=1` on our queries, no answers to anyone's. Joins by pinging the
    /// bootstrap nodes only (a client has no table of its own to fill).
    pub fn read_only(mut self) -> Self {
        self.cfg.read_only = true;
        self
    }

    /// Binds, starts and joins. A network that cannot be joined is
    /// [`MainlineError::NoBootstrap`].
    pub async fn build(self) -> Result<Mainline, MainlineError> {
        let mut cfg = self.cfg;
        cfg.bootstrap.extend(resolve_bootstrap(&self.names).await?);
        let join = !cfg.bootstrap.is_empty();
        let read_only = cfg.read_only;
        let node = Mainline::spawn(cfg).await?;
        if join {
            let joined = if read_only {
                node.connect().await.map(|_| ())
            } else {
                node.bootstrap().await.map(|_| ())
            };
            if let Err(e) = joined {
                node.shutdown().await;
                return Err(MainlineError::NoBootstrap {
                    reason: format!("no bootstrap node answered ({e})"),
                });
            }
        }
        Ok(node)
    }
}
