"""Muon vs AdamW: how many tokens each needs to reach the same loss, across batch sizes.

The paper (arXiv 2505.02222) reports that Muon needs 10-15% fewer tokens than AdamW for the same
loss, and that the token ratio R(B) = T_AdamW(B) / T_Muon(B) stays above 1 and does not shrink as
the batch size B grows past the critical batch. This package measures that at one fixed width:

    compare spec (TOML) -> every (optimizer, batch size, lr, seed) trial, dispatched on Ray and
    recorded in the study directory's ledger -> best lr per (optimizer, batch size) -> T_opt(B)
    -> R(B) and the tokens-vs-steps picture -> DIR/compare.json and PNG figures

One job per module, each importable on its own:

    spec       the compare spec: CompareSpec, its validation, the trials it names
    analysis   the pure maths (crossings, ratios, Pareto fronts) and the ledger's rows turned
               into the study's typed table (CompareTable, whose to_dict() is compare.json)
    run        run_compare: run the trials the ledger lacks, analyse, write the results
    results    compare.json on disk: writing it, reading a finished study back, its text table
    figures    the PNG figures, drawn from compare.json's content alone (matplotlib)

The study directory is a sweep directory of kind "compare" (telescope.store.directory): spec.toml,
sweep.json, the Parquet ledger, plus compare.json and the figures. Trial ids are content-addressed
(telescope.core.contract.trial_id), so re-running the same spec skips every recorded trial. A spec
may come back with a wider lr grid, more batch sizes or seeds, or another target: only its new
trials run, and the analysis reads exactly the trials the spec names.

    from telescope.studies.compare.run import run_compare            # what `telescope compare` does
    run_compare("sweeps/compare.toml", "runs/compare").ratios
    from telescope.studies.compare.results import load_compare       # later, e.g. from a report
    load_compare("runs/compare").table["ratios"]
"""
