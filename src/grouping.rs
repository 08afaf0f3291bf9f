//! Pushgateway grouping-key parsing (to be written).
