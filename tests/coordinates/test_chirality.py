import torch

from flowcg.coordinates.chirality import CAChirality


def test_shipped_structure_is_l_and_mirror_is_d(aldp, md_frames):
    check = CAChirality(aldp.topology)
    assert check.centers.tolist() == [[8, 6, 14, 10, 9]]
    x = torch.tensor(aldp.positions)[None]
    frames = torch.tensor(md_frames)
    assert not check.is_d(x).any() and not check.is_d(frames).any()
    mirror = frames * torch.tensor([-1.0, 1.0, 1.0])
    assert check.is_d(mirror).all()
    both = torch.cat([frames, mirror])
    assert check.fraction_d(both) == 0.5
    kept, labels = check.keep_l(both, torch.arange(len(both)))
    assert labels.tolist() == list(range(len(frames)))
    torch.testing.assert_close(kept, frames)
