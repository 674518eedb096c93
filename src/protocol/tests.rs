use super::oip::InferRequest;
use super::tensor::*;

fn sig() -> Signature {
    Signature {
        inputs: vec![
            TensorSpec { name: "x".into(), datatype: DataType::Fp32, shape: vec![-1, 3] },
            TensorSpec { name: "flag".into(), datatype: DataType::Bool, shape: vec![-1] },
        ],
        outputs: vec![TensorSpec { name: "y".into(), datatype: DataType::Int64, shape: vec![-1] }],
    }
}

fn decode(body: &str) -> Result<Vec<Tensor>, String> {
    let req = InferRequest::from_json(body.as_bytes()).map_err(|e| e.message)?;
    req.decode_inputs(&sig()).map_err(|e| e.message)
}

#[test]
fn flat_and_nested_data_decode_the_same_in_model_order() {
    let flat = decode(
        r#"{"inputs":[{"name":"flag","shape":[2],"datatype":"BOOL","data":[true,false]},
        {"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6.5]}]}"#,
    )
    .unwrap();
    let nested = decode(
        r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5,6.5]]},
        {"name":"flag","shape":[2],"datatype":"BOOL","data":[true,false]}]}"#,
    )
    .unwrap();
    assert_eq!(flat, nested);
    assert_eq!(flat[0].name, "x");
    assert_eq!(flat[0].shape, vec![2, 3]);
    assert_eq!(flat[0].data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]));
    assert_eq!(flat[1].data, TensorData::Bool(vec![true, false]));
}

#[test]
fn each_refusal_names_the_problem() {
    let cases = [
        (r#"{"inputs": ["#, "malformed JSON"),
        (r#"{"input": []}"#, "invalid inference request: missing field `inputs`"),
        (
            r#"{"inputs":[{"name":"z","shape":[1],"datatype":"BOOL","data":[true]}]}"#,
            "unknown input \"z\"; the model's inputs are: x, flag",
        ),
        (
            r#"{"inputs":[{"name":"flag","shape":[1],"datatype":"BOOL","data":[true]}]}"#,
            "missing input \"x\" (FP32 [-1, 3])",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"INT64","data":[1,2,3]},{"name":"flag","shape":[1],"datatype":"BOOL","data":[true]}]}"#,
            "input \"x\": expected datatype FP32, got INT64",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP99","data":[1,2,3]},{"name":"flag","shape":[1],"datatype":"BOOL","data":[true]}]}"#,
            "input \"x\": unsupported datatype \"FP99\"; expected FP32",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},{"name":"flag","shape":[1],"datatype":"BOOL","data":[true]}]}"#,
            "input \"x\": expected shape [-1, 3] (-1: any size), got [1, 4]",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5]},{"name":"flag","shape":[2],"datatype":"BOOL","data":[true,true]}]}"#,
            "input \"x\": shape [2, 3] needs 6 elements, data has 5",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3,4]},{"name":"flag","shape":[1],"datatype":"BOOL","data":[true]}]}"#,
            "input \"x\": shape [1, 3] needs 3 elements, data has more than 3",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,"two",3]},{"name":"flag","shape":[1],"datatype":"BOOL","data":[true]}]}"#,
            "input \"x\": element 1 is \"two\", not a valid FP32 value",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]},{"name":"flag","shape":[1],"datatype":"BOOL","data":[1]}]}"#,
            "input \"flag\": element 0 is 1, not a valid BOOL value",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":7},{"name":"flag","shape":[1],"datatype":"BOOL","data":[true]}]}"#,
            "input \"x\": data must be a JSON array",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[4294967296,4294967296,3],"datatype":"FP32","data":[]},{"name":"flag","shape":[1],"datatype":"BOOL","data":[true]}]}"#,
            "input \"x\": expected shape [-1, 3]",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]},{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
            "input \"x\" is given twice",
        ),
    ];
    for (body, want) in cases {
        let got = decode(body).unwrap_err();
        assert!(got.starts_with(want), "body {body}\n got  {got}\n want {want}");
    }
}

#[test]
fn integer_ranges_are_checked() {
    let s = Signature {
        inputs: vec![TensorSpec { name: "i".into(), datatype: DataType::Int8, shape: vec![2] }],
        outputs: vec![],
    };
    let ok = InferRequest::from_json(br#"{"inputs":[{"name":"i","shape":[2],"datatype":"INT8","data":[-128,127]}]}"#)
        .unwrap();
    assert_eq!(ok.decode_inputs(&s).unwrap()[0].data, TensorData::Int8(vec![-128, 127]));
    let bad =
        InferRequest::from_json(br#"{"inputs":[{"name":"i","shape":[2],"datatype":"INT8","data":[1,128]}]}"#).unwrap();
    assert!(bad.decode_inputs(&s).unwrap_err().message.contains("element 1 is 128"));
}

#[test]
fn output_selection_is_checked() {
    let req = InferRequest::from_json(br#"{"inputs":[],"outputs":[{"name":"y"}]}"#).unwrap();
    assert_eq!(req.selected_outputs(&sig()).unwrap(), Some(vec!["y".to_string()]));
    let req = InferRequest::from_json(br#"{"inputs":[],"outputs":[{"name":"nope"}]}"#).unwrap();
    assert_eq!(
        req.selected_outputs(&sig()).unwrap_err().message,
        "unknown output \"nope\"; the model's outputs are: y"
    );
    let req = InferRequest::from_json(br#"{"inputs":[]}"#).unwrap();
    assert_eq!(req.selected_outputs(&sig()).unwrap(), None);
}
