//! HTTP-01 answers across a fleet: the proxy asks the store's shared database for a token it
//! does not hold (another node ordered and published the answer there).

use kinfra_core::view::BoxFuture;
use kinfra_proxy::ChallengeLookup;
use kinfra_store::Store;
use tracing::debug;

/// The answers every node sharing the store published.
#[derive(Debug)]
pub(crate) struct SharedAnswers {
    store: Store,
}

impl SharedAnswers {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }
}

impl ChallengeLookup for SharedAnswers {
    fn key_authorization<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            match self.store.acme_challenge(token).await {
                Ok(answer) => answer,
                Err(error) => {
                    debug!(%error, "Looking a challenge answer up in the store failed.");
                    None
                }
            }
        })
    }
}
