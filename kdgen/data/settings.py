"""The ``data`` section of the config: which data source, and how its data are split and augmented.

Owned by the data family (a source reads its settings from here); :mod:`kdgen.config` composes it.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from kdgen.settings import Settings


class AugmentConfig(Settings):
    """Training augmentation; ``None`` keeps the data source's recommendation."""

    # Random shift of up to this many pixels (zero-padded), drawn per image in the batch.
    translate: int | None = Field(None, ge=0, le=64)
    # Random horizontal flips (off for digits and other data where a flip changes the class).
    hflip: bool | None = None


class DataConfig(Settings):
    """Which data, and how it is split: the val split (held out of the training split) makes every choice."""

    omitted_when_unset = ("classes", "image_column", "label_column", "val_split")

    # A registered data source (`kdgen sources`): digits, fashion-mnist, mnist, cifar10, cifar100, imagefolder, hf...
    name: str = "digits"
    # Where its files are, for sources that read files (each has a default, e.g. Debian's Fashion-MNIST).
    root: str | None = None
    # Share of the training split held out as val, stratified; the test split is never used for a choice.
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # Seed of the train/val split and of the train_per_class subset (the same for every run seed and arm).
    split_seed: int = 0
    # A fixed stratified subset of N training images per class (after the val split), the same for
    # every seed and arm: the data-limited regime where self-distillation pays. None: all of them.
    train_per_class: int | None = Field(None, ge=1)
    # Only these classes (the source's class indices), relabelled 0..n-1 in this order: e.g. models trained on
    # Fashion-MNIST's classes 0-4 and probed on 5-9 (kdgen transfer's held-out-classes protocol). None: all.
    classes: list[int] | None = None
    # Training augmentation (translate, hflip), done in batch on the device.
    augment: AugmentConfig = AugmentConfig()
    # Decode image folders on the fly (DataLoader workers) instead of keeping them resident;
    # None decides by size (see kdgen.data.imagefolder).
    stream: bool | None = None
    # synthetic data only
    num_train: int = Field(512, ge=2)
    num_test: int = Field(128, ge=1)
    image_size: int = Field(32, ge=4, le=1024)
    channels: int = Field(3, ge=1, le=16)
    num_classes: int = Field(10, ge=2)
    # image folders: training crop and evaluation resize/crop sizes
    train_crop: int = Field(224, ge=8)
    eval_resize: int = Field(256, ge=8)
    eval_crop: int = Field(224, ge=8)
    # hf only: the column of images; None: the one column whose feature is datasets.Image.
    image_column: str | None = Field(None, min_length=1)
    # hf only: the column of integer class ids; None: the one column whose feature is datasets.ClassLabel.
    label_column: str | None = Field(None, min_length=1)
    # hf only: the dataset's own split of this name (e.g. validation) is val, instead of val_fraction of train.
    val_split: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _hf_keys_only_for_hf(self) -> "DataConfig":
        given = [key for key in ("image_column", "label_column", "val_split") if getattr(self, key) is not None]
        if given and self.name != "hf":
            raise ValueError(f"data.{given[0]} is for data.name=hf (a Hugging Face dataset), not {self.name!r}")
        return self

    @field_validator("classes")
    @classmethod
    def _class_list(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) < 2 or len(set(value)) != len(value) or min(value) < 0):
            raise ValueError("give at least two different class indices, each >= 0")
        return value

    @field_validator("name")
    @classmethod
    def _known_source(cls, value: str) -> str:
        from kdgen.data import names

        if value not in names():
            raise ValueError(f"unknown data source {value!r}; choose one of {', '.join(names())}")
        return value
