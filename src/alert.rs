//! Alerting: rules evaluated live on the same subscriptions dashboards use, anomaly
//! detection, notifications.

pub mod anomaly;
