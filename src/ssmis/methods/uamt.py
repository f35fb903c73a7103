"""UA-MT: uncertainty-aware mean teacher (Yu et al., MICCAI 2019; UA-MT LA code and SSL4MIS
``train_uncertainty_aware_mean_teacher_2D``).

Mean Teacher (see :mod:`ssmis.methods.mean_teacher`) whose consistency is restricted to voxels the
teacher is sure about. Besides the teacher output used as the consistency target (on
``U + noise``), the teacher runs ``T = 8`` more noisy passes in ``T/2`` batches of the unlabeled
images repeated twice (as the originals); the mean softmax gives the entropy ``u``. With
``thr(t) = (0.75 + 0.25 sigmoid_rampup(t, threshold_rampup)) * ln K`` the loss is
``sum(mask * (softmax(s) - softmax(t))^2) / (N * sum(mask) + 1e-16)``, ``mask = u < thr``.

Faithful to the code: ``K = 2`` and ``N = 2`` even for 4-class ACDC (both scripts hard-code them);
``threshold_log_classes`` / ``normalize_by_classes`` use the class count instead. The threshold
ramp runs over the whole training (``threshold_rampup`` null = train.iterations).

Forward passes per iteration: student 1 (L+U) + teacher 1 + T/2 (each on 2U) = 6 calls for
T = 8 (9 U-sized teacher passes); student only while the consistency is off.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator

from ssmis.methods.mean_teacher import MeanTeacher, MeanTeacherParams
from ssmis.methods.teacher import gaussian_noise, teacher_mode
from ssmis.ramps import ShareOrInt, run_share, sigmoid_rampup


class UAMTParams(MeanTeacherParams):
    uncertainty_passes: int = Field(default=8, ge=2, description="T stochastic teacher passes")
    threshold_rampup: ShareOrInt | None = Field(
        default=None, description="iterations of the threshold ramp (null = all), or a share "
        "of train.iterations ('50%')", json_schema_extra=run_share("iterations"))
    threshold_log_classes: bool = Field(
        default=False, description="fix: ln(C) instead of the code's ln(2) as maximum entropy")
    normalize_by_classes: bool = Field(
        default=False, description="fix: divide by C * sum(mask) instead of the code's 2")

    @field_validator("uncertainty_passes")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError("uncertainty_passes must be even (passes run in pairs)")
        return v


class UAMT(MeanTeacher[UAMTParams]):
    name = "uamt"
    summary = ("UA-MT: mean teacher whose consistency is masked by MC-dropout uncertainty "
               "(Yu et al. 2019)")
    Params = UAMTParams

    @torch.no_grad()
    def uncertainty(self, unlabeled: torch.Tensor) -> torch.Tensor:
        """Entropy B x 1 x spatial of the mean softmax over T noisy teacher passes."""
        p = self.params
        repeated = unlabeled.repeat(2, *([1] * (unlabeled.dim() - 1)))
        probs = []
        with teacher_mode(self.teacher, p.teacher_train_mode):
            for _ in range(p.uncertainty_passes // 2):
                x = gaussian_noise(repeated, p.noise_std, p.noise_clip)
                probs.append(torch.softmax(self.teacher(x).float(), dim=1))
        n = unlabeled.shape[0]
        mean = torch.cat(probs).reshape(p.uncertainty_passes, n, *probs[0].shape[1:]).mean(0)
        return -(mean * torch.log(mean + 1e-6)).sum(dim=1, keepdim=True)

    def threshold(self, step: int, num_classes: int) -> float:
        p = self.params
        length = p.threshold_rampup if p.threshold_rampup is not None else self.cfg.train.iterations
        k = num_classes if p.threshold_log_classes else 2
        return (0.75 + 0.25 * sigmoid_rampup(step, length)) * math.log(k)

    def consistency_loss(
        self, student_u: torch.Tensor, unlabeled: torch.Tensor, step: int
    ) -> torch.Tensor:
        p = self.params
        t = self.teacher_logits(unlabeled)
        unc = self.uncertainty(unlabeled)
        c = student_u.shape[1]
        mask = (unc < self.threshold(step, c)).to(student_u.dtype)
        dist = (torch.softmax(student_u, 1) - torch.softmax(t, 1)) ** 2
        norm = c if p.normalize_by_classes else 2
        return (mask * dist).sum() / (norm * mask.sum() + 1e-16)
