"""The peer comparisons of bench_vs_peers.py: common.py (shared), vs_trl.py (training), vs_lm_eval.py
(evaluation). Imported as `peers` with benchmarks/ on sys.path (as when a script there runs)."""
