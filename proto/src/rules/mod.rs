//! What wins and what to do: pure functions of records, tested by simulation.
