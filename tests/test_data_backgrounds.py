"""Random backgrounds: a varied, seeded batch in range; the natural-image bank builds, loads and shows."""

from __future__ import annotations

import pytest
import torch

from diffnphr.__main__ import main
from diffnphr.data.backgrounds import BANK_SOURCES, BackgroundBank, build_background_bank, random_backgrounds


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory):
    return build_background_bank(tmp_path_factory.mktemp("bank") / "bank.safetensors", size=32, count=4)


def test_bank_has_no_people():
    assert "astronaut" not in BANK_SOURCES and "camera" not in BANK_SOURCES


def test_bank_builds_and_loads(bank_path):
    bank = BackgroundBank.load(bank_path)
    assert bank.patches.shape == (4, 3, 32, 32) and bank.patches.dtype == torch.uint8
    assert bank.sources == BANK_SOURCES[:4]
    assert len(set(bank.patches.float().mean(dim=(1, 2, 3)).tolist())) == 4  # four different crops


def test_backgrounds_are_seeded_in_range_and_varied(bank_path):
    bank = BackgroundBank.load(bank_path)
    first = random_backgrounds(32, 48, torch.Generator().manual_seed(5), "cpu", bank)
    again = random_backgrounds(32, 48, torch.Generator().manual_seed(5), "cpu", bank)
    assert first.shape == (32, 3, 48, 48) and first.dtype == torch.float32
    assert first.min() >= 0.0 and first.max() <= 1.0
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    spread = first.std(dim=(2, 3)).mean(dim=1)  # within-image variation
    assert (spread < 0.01).sum() >= 1 and (spread > 0.05).sum() >= 8  # some flat, many textured
    mean_colours = first.mean(dim=(2, 3))
    assert torch.cdist(mean_colours, mean_colours).max() > 0.5  # colours differ across the batch


def test_backgrounds_without_a_bank():
    out = random_backgrounds(6, 16, torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 16, 16) and out.min() >= 0.0 and out.max() <= 1.0
    assert random_backgrounds(0, 16, torch.Generator()).shape == (0, 3, 16, 16)


def test_missing_or_broken_bank_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="build-backgrounds"):
        BackgroundBank.load(tmp_path / "absent.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="background bank"):
        BackgroundBank.load(broken)
    with pytest.raises(ValueError, match="size"):
        random_backgrounds(2, 1, torch.Generator())


def test_cli_builds_the_default_bank(tmp_path, capsys):
    out = tmp_path / "backgrounds.safetensors"
    assert main(["build-backgrounds", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    bank = BackgroundBank.load(out)
    assert bank.patches.shape == (len(BANK_SOURCES), 3, 256, 256)
    assert out.stat().st_size < 3.2e6
