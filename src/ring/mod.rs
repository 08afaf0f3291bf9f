//! Consistent-hash algorithms (to be written).
