# Autoencoders (one per modality set), stored latents, and score networks.


rule train_autoencoder:
    """Encoder (temperature + the set's modalities) -> latent -> decoder (every field it encodes).

    Checkpoints (last and best epoch) go to models/checkpoints/; a killed job resumes from them.
    """
    input:
        train=DATASET.format(split="train"),
        validation=DATASET.format(split="validation"),
    output:
        model=AUTOENCODER,
        losses=AUTOENCODER_LOSSES,
    log:
        f"{LOGS}/train_autoencoder/{{modalities}}.log",
    benchmark:
        f"{BENCHMARKS}/train_autoencoder/{{modalities}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        **gpu_resources("train"),
    params:
        network=config["autoencoder"],
        training_options=config["training"],
        checkpoints=lambda wc: checkpoints_dir(RESULTS, autoencoder_name(wc.modalities)),
        device=config["device"],
        seed=config["seed"],
    script:
        "../scripts/train_autoencoder.py"


rule encode:
    """Latent codes of every split by the frozen encoder (eval mode), computed once."""
    input:
        model=AUTOENCODER,
        splits=expand(DATASET, split=SPLITS),
    output:
        expand(LATENTS, split=SPLITS, allow_missing=True),
    log:
        f"{LOGS}/encode/{{modalities}}.log",
    benchmark:
        f"{BENCHMARKS}/encode/{{modalities}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["resources"]["assimilate_threads"]
    resources:
        **gpu_resources("assimilate"),
    params:
        device=config["device"],
    script:
        "../scripts/encode.py"


rule train_score:
    """Denoising score matching on Markov-blanket windows, in pixel or latent space."""
    input:
        unpack(score_inputs),
    output:
        model=SCORE_NET,
        losses=SCORE_LOSSES,
    log:
        f"{LOGS}/train_score/{{space}}.log",
    benchmark:
        f"{BENCHMARKS}/train_score/{{space}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        **gpu_resources("train"),
    params:
        network=lambda wc: score_network(config, wc.space),
        # the optimisation: a change of one network's U-Net (params.network) retrains it alone
        training={k: v for k, v in config["score"].items() if k not in ("pixel", "latent")},
        training_options=config["training"],
        checkpoints=lambda wc: checkpoints_dir(RESULTS, score_name(wc.space)),
        device=config["device"],
        seed=config["seed"],
    script:
        "../scripts/train_score.py"
