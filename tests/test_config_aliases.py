"""Unknown keys that other frameworks' names for samft's keys get a suggestion by meaning."""

from pathlib import Path

import pytest

from samft.config import ConfigError, load

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("override, suggestion", [
    ("optim.learning_rate=1e-4", "Did you mean 'lr'?"),
    ("train.max_steps=10", "Did you mean 'steps'?"),
    ("data.bs=4", "Did you mean 'batch_size'?"),
    ("model.ckpt=x.pth", "Did you mean 'checkpoint'?"),
    ("train.num_threads=1", "Did you mean 'threads'?"),
])
def test_alias_gets_did_you_mean(override: str, suggestion: str):
    with pytest.raises(ConfigError) as err:
        load(CONFIGS / "sam_ft.yaml", [override])
    assert suggestion in str(err.value)
    assert f"Unknown config key '{override.split('=')[0]}'" in str(err.value)


def test_alias_of_another_section_is_not_suggested():
    # `lr` is an optim key, not a train key: spelling rules and the key list decide instead.
    with pytest.raises(ConfigError) as err:
        load(CONFIGS / "sam_ft.yaml", ["train.learning_rate=1e-4"])
    assert "'lr'" not in str(err.value) and "Keys of section 'train'" in str(err.value)


def test_typo_still_gets_spelling_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'steps'"):
        load(CONFIGS / "sam_ft.yaml", ["train.stpes=10"])
