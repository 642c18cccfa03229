//! Alerting: rules evaluated live on the same subscriptions dashboards use (`evaluator`),
//! anomaly detection (`anomaly`), notifications (`notify`). Rules, states and history live in
//! the metadata store (`meta::alerts`).

pub mod anomaly;
pub mod evaluator;
pub mod notify;
