"""A real sweep (real local Ray, real models, real Parquet) whose later level grows a ring."""

import re

from telescope.api import Sweep
from telescope.run.progress import Progress
from telescope.state import sweep_state
from telescope.store.ledger import Ledger
from tests.sweep_helpers import write_spec


def one_row_per_trial(out):
    trials = Ledger(out).trials()
    assert trials["trial_id"].is_unique and (trials["status"] == "completed").all()
    return trials


def test_a_later_level_grows_a_ring_on_real_trials(tmp_path):
    # lr far too low for 10 steps: higher is better at every width, so level 1's optimum lands on
    # its high-lr edge and one ring (max_shifts = 1) follows it; level 0 may not widen.
    path = write_spec(tmp_path, calibration_width=32, rule="max_shifts = 1")
    text = path.read_text().replace("max_widenings = 1\n", "max_widenings = 0\n")
    text = re.sub(r"(?s)(\[axes\.lr\]\s*low = )0\.003(\s*high = )0\.03", r"\g<1>0.0001\g<2>0.0004", text)
    path.write_text(text)
    out = tmp_path / "out"
    state = Sweep.create(path, out).run(num_cpus=2, progress=Progress(quiet=True))
    level0, level1 = state.levels
    assert level0.unbracketed.get("lr") == "high" and level0.grid.widened == 0
    assert level1.grid.widened == 1 and level1.grid.axis("lr").rings == 1
    trials = one_row_per_trial(out)
    assert (trials["level"] == 1).sum() == level1.grid.n_points == 4 * level1.grid.count("init_std")
    assert any("adding a ring to" in n for n in level1.notes)
    # the ledger alone replays to the same sweep, and running again is a no-op
    assert sweep_state(out)[2].levels[1].grid == level1.grid
    again = Sweep.open(out).resume(num_cpus=2, progress=Progress(quiet=True))
    assert len(one_row_per_trial(out)) == len(trials) and again.levels[1].grid == level1.grid
    status = Sweep.open(out).status()
    assert status["levels"][1]["rings"] == 1 and isinstance(status["levels"][1]["bracketed"], bool)
