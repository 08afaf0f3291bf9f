//! Static membership: the configured `pushgateway.servers`, read again on every reload.

use std::sync::Arc;

use tokio::sync::watch;

use super::discovery::{Discovery, Round};
use crate::config::Config;

pub struct StaticList {
    config: watch::Receiver<Arc<Config>>,
}

impl StaticList {
    pub fn new(config: watch::Receiver<Arc<Config>>) -> StaticList {
        StaticList { config }
    }
}

impl Discovery for StaticList {
    fn name(&self) -> &'static str {
        "static"
    }

    async fn discover(&mut self) -> Round {
        let config = self.config.borrow_and_update().clone();
        Round {
            addresses: config.servers.iter().cloned().collect(),
            failures: Vec::new(),
        }
    }

    async fn wait(&mut self) {
        if self.config.changed().await.is_err() {
            // The config sender is gone: the process is stopping; shutdown ends the driver.
            std::future::pending::<()>().await;
        }
    }
}
