"""One-line definitions of every metric id, for the report's tooltips and its "Metric glossary" section.

Why here and not a link: the report is one offline HTML file that gets mailed and archived, so a link into
the repository's docs would break; it carries these summaries instead (metric names in its tables show them
on hover and link to the glossary entry in the same page). The full entries (formula, settings, units, how to
read, which finding) are in docs/metrics.md; tests/test_docs.py keeps the two key sets equal to what the
diagnostics registry and the downstream stages can emit.
"""

from __future__ import annotations

from rankscope.report.htmlkit import Html, esc

_C = "loss along the line (one row per grid point, for plots)"

GLOSSARY: dict[str, str] = {
    # landscape
    "rand_sharpness": "Mean symmetric second difference of the loss along random directions (nats/token); "
                      "higher = sharper; negative = not at a minimum along these directions.",
    "rand_variance": "Variance of the loss across random directions, averaged over the grid; higher = more "
                     "anisotropic.",
    "rand_center_gap": "Loss at the checkpoint minus the lowest loss on the averaged random line; > 0 = not a "
                       "minimum.",
    "rand_curve": "Random-direction " + _C + ".",
    "rand_sharpness_fn": "Sharpness along random directions rescaled row by row to the weights' row norms "
                         "(nats/token; the number sharpness verdicts decide on: unchanged by reparameterisation).",
    "rand_variance_fn": "Variance of the loss across filter-normalised random directions, averaged over the grid.",
    "rand_curve_fn": "Filter-normalised random-direction " + _C + ".",
    "pca_top1_sharpness": "Sharpness when every weight matrix moves along its own top singular component "
                          "(nats/token); higher = sharper.",
    "pca_topk_sharpness": "Sharpness of the mean of the top-k singular-component curves; higher = sharper.",
    "pca_topk_variance": "Variance across the top-k singular-component curves; higher = they disagree more.",
    "pca_top1_curve": "Top-1 singular-direction " + _C + ".",
    "pca_topk_curve": "Mean top-k singular-direction " + _C + ".",
    "pca_sigma_top1_sharpness": "As pca_top1_sharpness with the direction scaled by the singular value; "
                                "higher = sharper.",
    "pca_sigma_topk_sharpness": "σ-scaled variant of pca_topk_sharpness; higher = sharper.",
    "pca_sigma_topk_variance": "σ-scaled variant of pca_topk_variance.",
    "pca_sigma_top1_curve": "σ-scaled top-1 " + _C + ".",
    "pca_sigma_topk_curve": "σ-scaled top-k " + _C + ".",
    # interpolation
    "ckpt_barrier": "Loss barrier on the straight path between consecutive checkpoints: max loss minus the "
                    "endpoints' mean (nats/token); ≈ 0 = linearly connected.",
    "ckpt_barrier_rel": "ckpt_barrier divided by the endpoints' mean loss.",
    "ckpt_barrier_lin": "Largest bump above the straight line between the two endpoint losses.",
    "ckpt_barrier_xfit": "Cross-fitted checkpoint barrier: the peak's α chosen on half of the sequences, its height "
                         "read on the other half (no upward bias from evaluation noise; decides).",
    "ckpt_curve": "Loss along the path between consecutive checkpoints.",
    "imib": "Inter-method barrier (IMBH): loss barrier between two methods' models at the same step "
            "(nats/token); higher = more separated basins.",
    "imib_rel": "imib divided by the endpoints' mean loss.",
    "imib_lin": "Largest bump above the straight line between the two methods' losses.",
    "imib_curve": "Loss along the path between two methods' models.",
    "imib_xfit": "Cross-fitted inter-method barrier: the peak's α chosen on half of the sequences, its height read "
                 "on the other half (no upward bias from evaluation noise; the barrier verdicts decide on).",
    # spectra
    "w_rank": "Numerical rank of each weight matrix (count).",
    "w_rank_ratio": "Numerical rank ÷ min(m, n); 1 = full rank.",
    "w_erank": "Effective rank exp(entropy of normalised singular values); higher = energy spread over more "
               "directions.",
    "w_erank_ratio": "Effective rank ÷ min(m, n).",
    "w_stable_rank": "Σ s² / s₁²; higher = less dominated by the top singular value.",
    "w_spectral_gap": "(s₁ − s₂) / s₁; higher = one direction dominates.",
    "w_sv2_sv1": "s₂ / s₁ (= 1 − spectral gap).",
    "w_n_sv_gt_0p1": "Number of singular values above 0.1 (absolute threshold).",
    "w_frac_sv_gt_0p1": "Fraction of singular values above 0.1.",
    "w_fro": "Frobenius norm of the weight.",
    "w_sv_max": "Largest singular value (spectral norm).",
    "w_alpha": "Power-law exponent of the eigenvalue tail (WeightWatcher-style fit).",
    "w_alpha_weighted": "w_alpha × log10 of the largest eigenvalue.",
    "w_alpha_xmin": "Start of the fitted power-law tail.",
    "w_alpha_n_tail": "Eigenvalues in the fitted tail (below ~10 the fit is unreliable).",
    "w_alpha_ks": "Kolmogorov–Smirnov distance of the power-law fit; lower = better fit.",
    "dw_rank": "Numerical rank of the update ΔW between consecutive checkpoints.",
    "dw_rank_ratio": "Rank of ΔW ÷ min(m, n).",
    "dw_erank": "Effective rank of the update ΔW; low = the update lives in few directions.",
    "dw_erank_ratio": "Effective rank of ΔW ÷ min(m, n).",
    "dw_stable_rank": "Stable rank of the update ΔW.",
    "dw_spectral_gap": "Spectral gap of ΔW.",
    "dw_sv2_sv1": "s₂ / s₁ of ΔW.",
    "dw_n_sv_gt_0p1": "Singular values of ΔW above 0.1.",
    "dw_frac_sv_gt_0p1": "Fraction of ΔW's singular values above 0.1.",
    "dw_fro": "‖ΔW‖_F: how far a matrix moved between checkpoints.",
    "dw_sv_max": "Largest singular value of ΔW.",
    "dw_alpha": "Power-law exponent of ΔW's eigenvalue tail.",
    "dw_alpha_weighted": "dw_alpha × log10 of ΔW's largest eigenvalue.",
    "dw_alpha_xmin": "Start of ΔW's fitted tail.",
    "dw_alpha_n_tail": "Eigenvalues in ΔW's fitted tail.",
    "dw_alpha_ks": "KS distance of ΔW's power-law fit.",
    "dw_rel_fro": "‖ΔW‖_F / ‖W‖_F: relative size of the update; higher = weights changed more.",
    "dw_fro_total": "Whole-model ‖ΔW‖ between checkpoints.",
    "dw_rel_fro_total": "Whole-model ‖ΔW‖ ÷ whole-model ‖W‖.",
    # activations
    "act_l2": "Mean L2 distance of hidden states to full-rank's; higher = further.",
    "act_rel_l2": "act_l2 ÷ mean norm of full-rank's hidden states; higher = further from full-rank.",
    "act_cos": "Mean cosine of hidden states with full-rank's; higher = closer.",
    "act_cka": "Linear CKA of hidden states with full-rank's (0–1); higher = closer.",
    "act_cka_debiased": "CKA with the unbiased HSIC estimator.",
    # extras
    "hess_top_eig": "Largest-magnitude Hessian eigenvalue (power iteration); higher = sharper.",
    "hess_trace": "Hutchinson estimate of the Hessian trace; higher = sharper on average.",
    "traj_pca_evr": "Explained-variance ratio of the training trajectory's principal directions.",
    "traj_pca_coord": "Checkpoint coordinates on the trajectory's principal directions.",
    "traj_pc1_sharpness": "Sharpness along the trajectory's first principal direction.",
    "traj_pc1_curve": "Loss along the trajectory's first principal direction.",
    # downstream
    "acc": "Fraction of items answered correctly (higher = better); compare with chance and majority-class rates.",
    "acc_norm": "As acc with log-likelihoods divided by answer length in characters.",
    "avg_acc": "Unweighted mean of acc over a task set's main tasks (subsets such as agreement_hard are "
               "reported, not averaged).",
    "heldout_nll": "NLL per token on a held-out text, every document from its start; lower = better.",
    "heldout_ppl": "exp(heldout_nll); on 'val' it is the whole validation text; lower = better.",
    "heldout_bpb": "Bits per UTF-8 byte on a held-out text (tokenizer-independent); lower = better.",
    "shift_gap_nll": "NLL on a shifted text minus NLL on in-domain validation; higher = suffers more off-domain.",
    "ft_acc": "Test accuracy after the fine-tuning probe; higher = better.",
    "ft_zero_shot_acc": "Frozen linear-probe accuracy before fine-tuning.",
    "ft_gain": "ft_acc − ft_zero_shot_acc; higher = adapts more.",
    "ft_nll_before": "In-domain NLL before fine-tuning.",
    "ft_nll_after": "In-domain NLL after fine-tuning.",
    "ft_forgetting": "In-domain NLL after − before fine-tuning; higher = forgets more.",
    # training log
    "val_loss": "Trainer's validation loss on a seeded sample of eval_tokens tokens in packed chunks.",
    "val_ppl": "exp(val_loss): the trainer's sampled validation perplexity.",
}


def metric_anchor(metric: str) -> str:
    return f"metric-{metric}"


def metric_label(metric: str, shown: str | None = None) -> Html:
    """HTML for a metric name in a table: hover shows its definition, click jumps to the glossary entry."""
    from rankscope.diagnostics.registry import canonical_metric

    key = canonical_metric(str(metric))
    text = esc(shown if shown is not None else metric)
    if key not in GLOSSARY:
        return Html(text)
    return Html(f'<a class="metric" href="#{metric_anchor(key)}" title="{esc(GLOSSARY[key])}">{text}</a>')


def glossary_html(metrics: set[str]) -> str:
    """The "Metric glossary" section: the metrics this report shows, with their one-line definitions."""
    from rankscope.diagnostics.registry import canonical_metric

    keys = sorted({canonical_metric(m) for m in metrics} & set(GLOSSARY))
    if not keys:
        return ""
    rows = "".join(f'<tr id="{metric_anchor(k)}"><td><code>{esc(k)}</code></td><td>{esc(GLOSSARY[k])}</td></tr>'
                   for k in keys)
    return ("<p class=\"note\">One line per metric shown in this report; formulas, settings, units and the "
            "findings that use each are in docs/metrics.md of the rankscope repository.</p>"
            f"<table><thead><tr><th>metric</th><th>definition</th></tr></thead><tbody>{rows}</tbody></table>")
