"""train.head: diagnosis: the classes train holds, a softmax over them, and a saved model that still
answers P(malignant) (the summed malignant classes), scored by the same val AUC as a binary head."""

import keras
import numpy as np
import pandas as pd
import pytest
from test_train import pretrained_weights

from skincancer.core.params import AugmentParams, TrainParams
from skincancer.train.data import eval_dataset, split_records, split_targets
from skincancer.train.diagnosis_classes import MIN_CLASS_IMAGES, diagnosis_classes
from skincancer.train.train import class_weights, train

DIAGNOSIS = TrainParams(epochs=3, batch_size=16, head="diagnosis", augment=AugmentParams(rotation=0.1))


def test_frequent_diagnoses_get_a_class_and_rare_ones_their_labels_other_class():
    rows = [("nevus", 0)] * 30 + [("melanoma", 1)] * 12 + [("dermatofibroma", 0)] * 3 + [("unknown", 0)] * 10 \
        + [("unknown", 1)] * MIN_CLASS_IMAGES
    classes = diagnosis_classes(pd.DataFrame(rows, columns=["diagnosis", "label"]))
    assert classes.names == ("melanoma", "nevus", "unknown_benign", "unknown_malignant", "other_benign", "other_malignant")
    assert classes.labels == (1, 0, 0, 1, 0, 1)
    assert classes.index("dermatofibroma", 0) == classes.names.index("other_benign")
    assert classes.index("squamous_cell_carcinoma", 1) == classes.names.index("other_malignant")  # only in test
    assert classes.index("unknown", 1) == classes.names.index("unknown_malignant")


def test_tensorflow_and_python_agree_on_every_images_class(tiny_shards):
    classes = diagnosis_classes(split_records(tiny_shards, "train"))
    in_graph = np.concatenate([target.numpy() for _, target in eval_dataset(tiny_shards, "val", 64, classes)])
    np.testing.assert_array_equal(in_graph, split_targets(tiny_shards, "val", classes))
    labels = split_records(tiny_shards, "val")["label"].to_numpy()
    np.testing.assert_array_equal(np.asarray(classes.labels)[in_graph], labels)  # a class never crosses its label


def test_class_weights_give_each_diagnosis_its_labels_weight(tiny_shards):
    classes = diagnosis_classes(split_records(tiny_shards, "train"))
    binary = class_weights(tiny_shards, "class_weight")
    per_class = class_weights(tiny_shards, "class_weight", classes)
    assert per_class == {index: binary[label] for index, label in enumerate(classes.labels)}


@pytest.mark.parametrize("pretrained", [False, True], ids=["from_scratch", "probe_then_fine_tune"])
def test_diagnosis_head_saves_a_model_answering_the_malignant_probability(tiny_shards, tmp_path, pretrained):
    params = DIAGNOSIS
    if pretrained:
        params = DIAGNOSIS.model_copy(update={"weights": pretrained_weights(tmp_path), "epochs": 2,
                                              "fine_tune_epochs": 2, "fine_tune_layers": 6})
    history = train(params, tiny_shards, tmp_path / "model.keras", tmp_path / "dvclive")
    model = keras.saving.load_model(tmp_path / "model.keras")
    assert model.outputs[0].shape == (None, 1)
    classes = diagnosis_classes(split_records(tiny_shards, "train"))
    aggregate = model.get_layer("malignant")
    assert aggregate.class_names == list(classes.names) and aggregate.malignant == classes.malignant_mask
    images = np.concatenate([x for x, _ in eval_dataset(tiny_shards, "val", 64)])
    softmax = keras.Model(model.inputs, model.get_layer("diagnosis").output).predict(images, verbose=0)
    np.testing.assert_allclose(softmax.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.predict(images, verbose=0)[:, 0], softmax[:, np.asarray(classes.labels) == 1].sum(axis=1), atol=1e-6)
    # the history's val AUC is the binary AUC of that probability: it picked the saved epoch
    model.compile(loss="binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
    auc = model.evaluate(eval_dataset(tiny_shards, "val", 64), return_dict=True, verbose=0)["auc"]
    assert auc == pytest.approx(history["val_auc"].max(), abs=1e-3)
    if pretrained:
        assert history["phase"].tolist() == [1, 1, 2, 2]
