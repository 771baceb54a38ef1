"""Each stage states its inputs once: the stage table's `inputs` are the component's own `<stage>_inputs`, and what a
stage's cache hashed in a real run (recorded in its cards) is exactly that, no path more or less."""

import json
from pathlib import Path

from components.config import load_params
from components.stage import STAGE_CARD
from flows.stages import stages_for


def hashed_paths(outputs: list[Path]) -> set[str]:
    """Every path the cards under a stage's outputs say their keys hashed."""
    found: set[str] = set()
    for output in outputs:
        for card in Path(output).rglob(STAGE_CARD):
            for value in json.loads(card.read_text())["inputs"].values():
                found |= set(value if isinstance(value, list) else [value]) - {None}
    return found


def test_every_stage_hashes_exactly_the_inputs_the_table_declares(tiny_pipeline: Path):
    params = load_params(tiny_pipeline, "tiny")
    ws = params.ws
    checked = []
    for stage in stages_for(params):
        declared = {str(path.resolve()) for path in stage.input_paths(ws, params)}
        hashed = hashed_paths(stage.outputs(ws, params))
        assert hashed == declared, (
            f"{stage.name}: its cache hashed {sorted(hashed - declared)} that the table does not declare, and the "
            f"table declares {sorted(declared - hashed)} that its cache did not hash"
        )
        checked.append(stage.name)
    # every kind of cached stage took part (gate and register hash nothing: they judge the registry's state)
    assert {"curate", "pairs", "train-domain", "merge-ties", "realign", "prune", "evaluate", "report"} <= set(checked)
    assert hashed_paths([ws.job_model("domain")]) >= {str(ws.curated.resolve() / "domain_qa")}
