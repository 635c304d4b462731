"""The paper's published Table 2 (Kwon et al., ICLR 2024), in one place for every report script:
per task, the model it ran and (AUC, recall) of Hessian-free and DataInf. The keys are the task
names that appear in inflab's experiment names."""

TABLE2 = {
    "transformations": {"title": "sentence transformations", "model": "Llama-2-13B-chat",
                        "hessian_free": (0.999, 0.985), "datainf": (1.000, 0.997)},
    "math": {"title": "math (no reasoning)", "model": "Llama-2-13B-chat",
             "hessian_free": (0.770, 0.258), "datainf": (1.000, 0.999)},
    "math_reasoning": {"title": "math (reasoning)", "model": "Llama-2-13B-chat",
                       "hessian_free": (0.772, 0.258), "datainf": (1.000, 0.996)},
    "diffusion_style": {"title": "diffusion style", "model": "Stable Diffusion",
                        "hessian_free": (0.692, 0.533), "datainf": (0.820, 0.687),
                        # the authors' style notebook, its own recorded output (validation images as queries)
                        "notebook": "the notebook's own output: AUC 0.612 (Hessian-free) / 0.599 (DataInf)"},
    "diffusion_subject": {"title": "diffusion subject", "model": "Stable Diffusion",
                          "hessian_free": (0.820, 0.210), "datainf": (0.865, 0.315)},
}
BY_TITLE = {entry["title"]: entry for entry in TABLE2.values()}
