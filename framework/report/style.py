"""How the report scripts name and colour the estimators, and how they save a figure."""
import os

COLOURS = {
    "exact": "#000000", "datainf": "#d62728", "hessian_free": "#1f77b4", "lissa": "#2ca02c",
    "lissa_reference_code": "#98df8a", "kfac": "#9467bd", "ekfac": "#e377c2", "cg": "#7f7f7f",
    "cg_ekfac": "#c7c7c7", "lissa_ekfac": "#bcbd22", "arnoldi": "#8c564b", "exact_unit": "#555555",
    "exact_relatif": "#aaaaaa", "datainf_unit": "#ff9896", "datainf_relatif": "#ff7f0e",
    "hessian_free_unit": "#17becf", "tracin": "#393b79",
}
LABELS = {
    "exact": "Exact", "datainf": "DataInf", "hessian_free": "Hessian-free", "lissa": "LiSSA (paper eq.)",
    "lissa_reference_code": "LiSSA (paper's code)", "kfac": "K-FAC", "ekfac": "EK-FAC", "cg": "CG",
    "cg_ekfac": "CG (EK-FAC preconditioned)", "lissa_ekfac": "LiSSA (EK-FAC preconditioned)", "arnoldi": "Arnoldi (p = 64)",
    "exact_unit": "Exact, unit", "exact_relatif": "Exact, RelatIF", "datainf_unit": "DataInf, unit",
    "datainf_relatif": "DataInf, RelatIF", "hessian_free_unit": "Hessian-free, unit (cosine)",
    "tracin": "TracIn (3 checkpoints)",
}
ORDER = ["exact", "cg", "datainf", "ekfac", "kfac", "lissa", "lissa_reference_code", "hessian_free",
         "arnoldi", "cg_ekfac", "lissa_ekfac", "exact_unit", "exact_relatif", "datainf_unit", "datainf_relatif",
         "hessian_free_unit", "tracin"]


def save(fig, out, name):
    """out/name.png and out/name.pdf; closes the figure."""
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(os.path.join(out, f"{name}.{ext}"), dpi=150, bbox_inches="tight")
    plt.close(fig)
