"""G-SimCLR: Chakraborty, Gosthipaty & Paul, *G-SimCLR: Self-Supervised Contrastive Learning
with Guided Projection via Pseudo Labelling* (ICDM Workshops 2020).

Before contrastive training, a convolutional denoising autoencoder is trained on the
unlabeled training images (Gaussian noise ``ae_noise`` on the input, reconstruction
loss on the clean image); k-means (scikit-learn) on its latent codes gives every training
image a pseudo-label. SimCLR's NT-Xent is then trained so that images with the same
pseudo-label are never each other's negatives.

Deviation: the paper builds batches in which no two images share a pseudo-label; the
archbench loop draws its own batches, so the same effect on the loss is obtained by
removing same-pseudo-label pairs from each anchor's negatives in the NT-Xent denominator
(the positive pair stays). Everything else is SimCLR (here the v2 projection head of
:mod:`.simclr`; the paper used SimCLR's 2-layer head, ``proj_layers=2``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train.tasks import Batch, register_task
from .augment import to_unit
from .simclr import SimCLRv2

__all__ = ["DenoisingAutoencoder", "GSimCLR", "pseudo_labels"]


class DenoisingAutoencoder(nn.Module):
    """Two stride-2 convolutions down to a ``latent`` x H/4 x W/4 code, two transposed
    convolutions back; sigmoid output in [0, 1]."""

    def __init__(self, in_chans: int, width: int = 32, latent: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, 2, 1),
            nn.ReLU(True),
            nn.Conv2d(width, latent, 3, 2, 1),
            nn.ReLU(True),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(latent, width, 4, 2, 1),
            nn.ReLU(True),
            nn.ConvTranspose2d(width, in_chans, 4, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def pseudo_labels(
    images: torch.Tensor,
    clusters: int,
    steps: int = 300,
    noise: float = 0.1,
    batch_size: int = 128,
    seed: int = 0,
) -> torch.Tensor:
    """Train a denoising autoencoder on uint8 ``images`` for ``steps`` steps, then
    k-means (``clusters``) on the flattened latent codes; returns (N,) pseudo-labels."""
    from sklearn.cluster import KMeans

    if clusters < 2 or clusters > len(images):
        raise ValueError(f"clusters must be in [2, {len(images)}], got {clusters}")
    h, w = images.shape[-2:]
    if h % 4 or w % 4:
        raise ValueError(f"g_simclr's autoencoder needs image sides divisible by 4, got {h}x{w}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ae = DenoisingAutoencoder(images.shape[1])
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=g)
        x = to_unit(images[idx])
        noisy = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
        loss = F.mse_loss(ae(noisy), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()
    with torch.no_grad():
        codes = torch.cat(
            [
                ae.encoder(to_unit(images[i : i + 512])).flatten(1)
                for i in range(0, len(images), 512)
            ]
        )
    km = KMeans(n_clusters=clusters, n_init=3, random_state=seed)
    return torch.as_tensor(km.fit_predict(codes.numpy()), dtype=torch.long)


@register_task("g_simclr")
class GSimCLR(SimCLRv2):
    """SimCLR whose negatives exclude images of the anchor's pseudo-class."""

    def __init__(
        self,
        clusters: int = 10,
        ae_steps: int = 300,
        ae_noise: float = 0.1,
        temperature: float = 0.1,
        proj_dim: int = 128,
        proj_layers: int = 3,
        proj_hidden: int = 0,
        crop_scale: float = 0.2,
        jitter: float = 0.5,
        blur: float = 0.0,
    ) -> None:
        super().__init__(temperature, proj_dim, proj_layers, proj_hidden, crop_scale, jitter, blur)
        if clusters < 2 or ae_steps < 1 or not 0 <= ae_noise <= 1:
            raise ValueError("clusters must be >= 2, ae_steps >= 1 and ae_noise in [0, 1]")
        self.clusters, self.ae_steps, self.ae_noise = clusters, ae_steps, ae_noise
        self.train_pseudo = torch.zeros(0, dtype=torch.long)
        self.val_pseudo = torch.zeros(0, dtype=torch.long)
        self._training = True

    def setup(self, model: nn.Module, data: Any, recipe: Any) -> None:
        super().setup(model, data, recipe)
        seed = int(getattr(recipe, "seed", 0))
        # one autoencoder + k-means over the training and validation images, so validation
        # batches get pseudo-labels of the same clustering (no split's labels are read)
        n = len(data.train.images)
        both = torch.cat([data.train.images, data.val.images])
        labels = pseudo_labels(both, self.clusters, self.ae_steps, self.ae_noise, seed=seed)
        self.train_pseudo, self.val_pseudo = labels[:n], labels[n:]

    def exclude(self, batch: Batch) -> torch.Tensor:
        table = self.train_pseudo if self._training else self.val_pseudo
        p = table.to(batch.index.device)[batch.index]
        return p.view(-1, 1) == p.view(1, -1)

    def step(self, batch: Batch, state: Any) -> dict[str, Any]:
        self._training = state.model.training
        return super().step(batch, state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            **super().state_dict(),
            "train_pseudo": self.train_pseudo,
            "val_pseudo": self.val_pseudo,
        }

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(sd)
        if "train_pseudo" in sd:
            self.train_pseudo = sd["train_pseudo"].long().cpu()
            self.val_pseudo = sd["val_pseudo"].long().cpu()
