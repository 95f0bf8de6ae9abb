//! How many answers a `get` or stores a `put` waits for before it returns.

use std::num::NonZeroUsize;

/// How many valid values a `get` waits for, or how many stores a `put` waits for, before it
/// returns. A `put` still sends every STORE to the k closest nodes; a quorum only decides when
/// the caller hears back. When fewer nodes exist than the quorum asks for, the query returns
/// once every node it found has answered.
///
/// ```
/// use kad_core::Quorum;
///
/// assert_eq!(Quorum::One.count(20), 1);
/// assert_eq!(Quorum::Majority.count(20), 11);
/// assert_eq!(Quorum::All.count(20), 20);
/// assert_eq!(Quorum::n(3).count(20), 3);
/// assert_eq!(Quorum::n(0), Quorum::One);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Quorum {
    /// The first answer (a `get`'s default).
    One,
    /// More than half of the k closest nodes.
    Majority,
    /// Every one of the k closest nodes that answers (a `put`'s default; for a `get`: the best
    /// value after the whole lookup).
    All,
    /// This many.
    N(NonZeroUsize),
}

impl Quorum {
    /// `n` answers; 0 is taken as [`One`](Self::One).
    pub fn n(n: usize) -> Self {
        NonZeroUsize::new(n).map_or(Self::One, Self::N)
    }

    /// The number of answers among `k` closest nodes.
    pub fn count(self, k: usize) -> usize {
        match self {
            Self::One => 1,
            Self::Majority => k / 2 + 1,
            Self::All => k,
            Self::N(n) => n.get(),
        }
    }

    /// The engine's number: 0 for [`All`](Self::All) (every node of the lookup answers, however
    /// many there are), else [`count`](Self::count).
    pub(crate) fn engine(self, k: usize) -> usize {
        match self {
            Self::All => 0,
            other => other.count(k),
        }
    }
}
