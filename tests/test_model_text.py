"""Text pipelines: skl2onnx's CountVectorizer and TfidfVectorizer (StringNormalizer,
Tokenizer, TfIdfVectorizer) over string inputs, against onnxruntime and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper as h

from tests.model_runner import MAX_BYTES, outputs, reference, run_wasm
from wasmq import modelfile
from wasmq.client import Client
from wasmq.toolchain.model import ModelError, build_model

sklearn = pytest.importorskip("sklearn")
skl2onnx = pytest.importorskip("skl2onnx")
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

TP = onnx.TensorProto
OPSETS = {"": 21, "ai.onnx.ml": 3}
DOCS = ["the cat sat on the mat", "dogs are great pets", "The Cat and the Dog!",
        "bird songs at dawn", "cats, dogs; birds and a cat", "a quick brown fox",
        "Cat food for CATS", "dog days of summer", "the bird and the cat sat",
        "pets: dogs, cats, birds"]
LABELS = [0, 1, 0, 2, 0, 1, 0, 1, 2, 1]
# escapes, non-ASCII letters (not in skl2onnx's [a-zA-Z0-9_]+: they split tokens as in
# onnxruntime), an emoji, an empty text, words the vocabulary never saw
ODD = ["caf\u00e9 \"quoted\" dogs\ncat\ttab\\slash", "", "\U0001F600 cat_dog CAT",
       "zebra xylophone", "dog dog dog dog cat"]


def converted(model: object) -> bytes:
    return skl2onnx.to_onnx(model, np.array(DOCS[:1]), target_opset=OPSETS,
                            options={id(model): {"zipmap": False}}).SerializeToString()


@pytest.mark.parametrize("make", [
    lambda: make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500)),
    lambda: make_pipeline(CountVectorizer(ngram_range=(1, 2)), LogisticRegression(max_iter=500)),
    lambda: make_pipeline(TfidfVectorizer(ngram_range=(1, 3), sublinear_tf=True,
                                          stop_words=["the", "and"]),
                          LogisticRegression(C=5.0, max_iter=500)),
], ids=["tfidf", "count-bigrams", "tfidf-trigrams-sublinear-stopwords"])
def test_text_pipelines_answer_as_onnxruntime_and_scikit_learn(make: object) -> None:
    model = make().fit(DOCS, LABELS)
    data = converted(model)
    built = build_model(data, max_bytes=MAX_BYTES)
    assert [(t.name, t.dtype) for t in built.inputs] == [("X", "string")]
    sess = modelfile.session(data)
    for doc in DOCS + ODD:
        got = outputs(built, run_wasm(built.wasm, json.dumps({"input": [doc]}).encode())
                      .output)
        want = sess.run(None, {"X": np.array([doc])})
        np.testing.assert_array_equal(got["label"], want[0], err_msg=doc)
        np.testing.assert_allclose(got[built.outputs[1].name], want[1], atol=1e-6,
                                   err_msg=doc)
        if doc in DOCS:  # ASCII text: the conversion is the estimator's
            assert got["label"].tolist() == model.predict([doc]).tolist()
    bare = json.loads(run_wasm(built.wasm, b'{"input": "Cat food"}').output)
    assert bare["output"] == model.predict(["Cat food"]).tolist()


def test_ngram_weights_and_indexes_against_onnxruntime() -> None:
    """TfIdfVectorizer alone after a Tokenizer: TFIDF and IDF modes, weights of the pool's
    n-grams landing at permuted output indexes, a vocabulary of uni- and bigrams, and
    skip-grams (ONNX's own cases, over integers, run in test_model_backend)."""
    for mode, skips in (("TF", 0), ("IDF", 0), ("TFIDF", 0), ("TF", 2), ("TFIDF", 1)):
        nodes = [h.make_node("StringNormalizer", ["x"], ["n"], case_change_action="UPPER"),
                 h.make_node("Tokenizer", ["n"], ["t"], domain="com.microsoft", mark=0,
                             mincharnum=2, pad_value="#", tokenexp="[A-Z]+"),
                 h.make_node("Flatten", ["t"], ["f"]),
                 h.make_node("TfIdfVectorizer", ["f"], ["y"], mode=mode, min_gram_length=1,
                             max_gram_length=2, max_skip_count=skips, ngram_counts=[0, 3],
                             ngram_indexes=[4, 0, 2, 1, 3],
                             pool_strings=["AB", "CD", "EF", "AB", "CD", "CD", "EF"],
                             weights=[0.5, 2.0, 3.0, 4.0, 5.0])]
        graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.STRING, [1])],
                             [h.make_tensor_value_info("y", TP.FLOAT, None)])
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17),
                                                   h.make_opsetid("com.microsoft", 1)])
        model.ir_version = 8
        built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
        for doc in ("ab cd cd ef x ab", "cd-ef cd ef", "z", "AbCd aB cD", "ab zz cd qq cd ef"):
            got = outputs(built, run_wasm(built.wasm, json.dumps({"input": [doc]}).encode())
                          .output)["y"]
            want = reference(model, {"x": np.array([doc], dtype=object)})["y"]
            np.testing.assert_allclose(got.reshape(-1), want.reshape(-1),
                                       err_msg=f"{mode} {skips} {doc}")


def test_what_text_cannot_do_is_refused_by_name() -> None:
    def model_of(nodes: list) -> bytes:
        graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.STRING, [1])],
                             [h.make_tensor_value_info("y", TP.FLOAT, None)])
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17),
                                                   h.make_opsetid("com.microsoft", 1)])
        model.ir_version = 8
        return model.SerializeToString()

    vectorizer = h.make_node("TfIdfVectorizer", ["t"], ["y"], mode="TF", min_gram_length=1,
                             max_gram_length=1, ngram_counts=[0], ngram_indexes=[0],
                             pool_strings=["a"])
    separators = h.make_node("Tokenizer", ["x"], ["t"], domain="com.microsoft", mark=0,
                             mincharnum=1, pad_value="#", separators=[" "])
    with pytest.raises(ModelError, match="Tokenizer with separators is not supported"):
        build_model(model_of([separators, vectorizer]), max_bytes=MAX_BYTES)
    regex = h.make_node("Tokenizer", ["x"], ["t"], domain="com.microsoft", mark=0,
                        mincharnum=1, pad_value="#", tokenexp="a|b")
    with pytest.raises(ModelError, match=r"the tokenexp 'a\|b' is not supported"):
        build_model(model_of([regex, vectorizer]), max_bytes=MAX_BYTES)
    cast = h.make_node("Cast", ["n"], ["y"], to=TP.FLOAT)
    lower = h.make_node("StringNormalizer", ["x"], ["n"], case_change_action="LOWER")
    with pytest.raises(ModelError, match="Cast on text is not supported"):
        build_model(model_of([lower, cast]), max_bytes=MAX_BYTES)


def test_a_text_column_beside_a_category_column_in_a_dataframe() -> None:
    """A ColumnTransformer: TF-IDF over one string column, one-hot over another; the first
    is read as text, the second as categories."""
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"text": DOCS, "city": ["paris", "lyon", "nice", "lyon", "paris"] * 2})
    columns = ColumnTransformer([("t", TfidfVectorizer(), "text"),
                                 ("c", OneHotEncoder(handle_unknown="ignore"), ["city"])])
    model = make_pipeline(columns, LogisticRegression(max_iter=500)).fit(frame, LABELS)
    data = modelfile.onnx_bytes(model, frame)
    built = build_model(data, max_bytes=MAX_BYTES)
    assert [t.dtype for t in built.inputs] == ["string", "string"]
    local = modelfile.local_outputs(data, frame)
    np.testing.assert_allclose(local["output_probability"], model.predict_proba(frame),
                               atol=1e-5)
    for i in range(len(frame)):
        answer = json.loads(run_wasm(built.wasm, modelfile.row_request(frame, i).encode())
                            .output)
        assert modelfile.disagreement(modelfile.row(local, i), answer) is None


def test_deploy_model_takes_a_list_of_strings_end_to_end(up: str) -> None:
    model = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500)).fit(DOCS, LABELS)
    client = Client(up)
    fn = client.deploy_model(model, name="texts", example=DOCS[:1], check=DOCS + ODD[1:])
    answer = client.run(fn.cfid, json.dumps({"input": ["the cat and the bird"]})).json()
    assert answer["output"] == model.predict(["the cat and the bird"]).tolist()
    np.testing.assert_allclose(np.ravel(answer["output_probability"]),
                               model.predict_proba(["the cat and the bird"])[0], atol=1e-5)
