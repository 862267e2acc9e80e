//! journal (being written)
