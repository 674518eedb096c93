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
    let mut req = InferRequest::from_json(body.as_bytes()).map_err(|e| e.message)?;
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

/// Data read while parsing (datatype first) and data read after (data first, kept as JSON)
/// give the same tensors and the same refusals.
#[test]
fn data_before_or_after_its_datatype_decodes_and_is_refused_the_same() {
    let pairs = [
        r#""shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5,6.5]]"#,
        r#""shape":[1,3],"datatype":"FP32","data":[1,"two",3]"#,
        r#""shape":[1,3],"datatype":"FP32","data":[1,{"a":[1,2]},3]"#,
        r#""shape":[1,3],"datatype":"FP32","data":[1,null,3]"#,
        r#""shape":[1,3],"datatype":"FP32","data":7"#,
        r#""shape":[1,3],"datatype":"FP32","data":{"a":1}"#,
        r#""shape":[1,3],"datatype":"FP32","data":null"#,
        r#""shape":[1,3],"datatype":"FP32","data":[1,2,3,4]"#,
        r#""shape":[1,3],"datatype":"FP32","data":[1e39,-2.5e-3,18446744073709551615]"#,
    ];
    for fields in pairs {
        let (head, data) = fields.split_at(fields.find(r#""data""#).unwrap());
        let first = format!(
            r#"{{"inputs":[{{"name":"x",{head}{data}}},{{"name":"flag","shape":[1],"datatype":"BOOL","data":[true]}}]}}"#
        );
        let head = head.trim_end_matches(',');
        let last = format!(
            r#"{{"inputs":[{{{data},"name":"x",{head}}},{{"name":"flag","shape":[1],"datatype":"BOOL","data":[true]}}]}}"#
        );
        assert_eq!(decode(&first), decode(&last), "{fields}");
    }
    assert_eq!(
        decode(r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,{"a":[1,2]},3]},{"name":"flag","shape":[1],"datatype":"BOOL","data":[true]}]}"#)
            .unwrap_err(),
        "input \"x\": element 1 is {\"a\":[1,2]}, not a valid FP32 value"
    );
}

#[test]
fn a_syntax_error_after_a_refused_element_is_still_malformed_json() {
    let got = decode(r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,"two",3}]}"#).unwrap_err();
    assert!(got.starts_with("malformed JSON"), "{got}");
}

#[test]
fn fields_are_checked_like_a_derived_struct() {
    let got =
        decode(r#"{"inputs":[{"name":"x","name":"y","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#).unwrap_err();
    assert!(got.contains("duplicate field `name`"), "{got}");
    let got = decode(r#"{"inputs":[{"name":"x","datatype":"FP32","data":[1,2,3]}]}"#).unwrap_err();
    assert!(got.contains("missing field `shape`"), "{got}");
    let got = decode(
        r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3],"extra":{"a":[1]}},{"name":"flag","shape":[1],"datatype":"BOOL","data":[true]}]}"#,
    );
    assert!(got.is_ok(), "{got:?}");
}

#[test]
fn integer_ranges_are_checked() {
    let s = Signature {
        inputs: vec![TensorSpec { name: "i".into(), datatype: DataType::Int8, shape: vec![2] }],
        outputs: vec![],
    };
    let mut ok =
        InferRequest::from_json(br#"{"inputs":[{"name":"i","shape":[2],"datatype":"INT8","data":[-128,127]}]}"#)
            .unwrap();
    assert_eq!(ok.decode_inputs(&s).unwrap()[0].data, TensorData::Int8(vec![-128, 127]));
    let mut bad =
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

// --- binary tensor data extension ---------------------------------------------------------------

use super::binary;
use super::oip::{encode_response, OutputForms};
use half::{bf16, f16};
use serde_json::json;

/// `json` as the header, `tail` after it, with the header length the client would send.
fn binary_request(json: serde_json::Value, tail: &[u8]) -> (bytes::Bytes, String) {
    let head = serde_json::to_vec(&json).unwrap();
    let length = head.len().to_string();
    (bytes::Bytes::from([head, tail.to_vec()].concat()), length)
}

fn decode_binary(sig: &Signature, json: serde_json::Value, tail: &[u8]) -> Result<Vec<Tensor>, String> {
    let (body, length) = binary_request(json, tail);
    let mut req = InferRequest::from_body(body, Some(length.as_bytes())).map_err(|e| e.message)?;
    req.decode_inputs(sig).map_err(|e| e.message)
}

fn one_input(datatype: DataType) -> Signature {
    Signature {
        inputs: vec![TensorSpec { name: "t".into(), datatype, shape: vec![-1] }],
        outputs: vec![TensorSpec { name: "t".into(), datatype, shape: vec![-1] }],
    }
}

/// Three elements of every datatype, with values that exercise sign, range and precision.
fn samples() -> Vec<TensorData> {
    vec![
        TensorData::Bool(vec![true, false, true]),
        TensorData::Uint8(vec![0, 200, 255]),
        TensorData::Int8(vec![-128, 0, 127]),
        TensorData::Int16(vec![-32768, 1, 32767]),
        TensorData::Int32(vec![i32::MIN, -1, i32::MAX]),
        TensorData::Int64(vec![i64::MIN, 42, i64::MAX]),
        TensorData::Fp16(vec![f16::from_f32(-1.5), f16::from_f32(0.25), f16::MAX]),
        TensorData::Bf16(vec![bf16::from_f32(-2.0), bf16::from_f32(0.5), bf16::from_f32(3.0e38)]),
        TensorData::Fp32(vec![-1.25, 0.1, f32::MAX]),
        TensorData::Fp64(vec![-1.25, 0.1, f64::MAX]),
        TensorData::Bytes(vec![b"".to_vec(), b"hello".to_vec(), "caf\u{e9}".as_bytes().to_vec()]),
    ]
}

#[test]
fn every_datatype_round_trips_in_binary_form() {
    let all = samples();
    assert_eq!(all.len(), DataType::ALL.len(), "a sample for every datatype");
    for data in all {
        let datatype = data.datatype();
        assert_eq!(DataType::parse(datatype.as_str()), Some(datatype));
        let mut raw = Vec::new();
        binary::encode(&data, &mut raw).unwrap();
        assert_eq!(raw.len(), binary::encoded_len(&data), "{datatype}");
        let request = json!({"inputs": [{"name": "t", "shape": [3], "datatype": datatype.as_str(),
            "parameters": {"binary_data_size": raw.len()}}]});
        let got = decode_binary(&one_input(datatype), request, &raw).unwrap();
        assert_eq!(got, vec![Tensor { name: "t".into(), shape: vec![3], data: data.clone() }], "{datatype}");
    }
}

#[test]
fn every_datatype_but_bf16_round_trips_in_json() {
    for data in samples() {
        let datatype = data.datatype();
        let t = Tensor { name: "t".into(), shape: vec![3], data };
        let forms = OutputForms::default();
        if datatype == DataType::Bf16 {
            assert!(encode_response("m", None, None, std::slice::from_ref(&t), &forms).is_err());
            continue;
        }
        let answer = encode_response("m", None, None, std::slice::from_ref(&t), &forms).unwrap();
        assert_eq!(answer.header_length, None, "JSON only: {datatype}");
        let answer: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        let output = &answer["outputs"][0];
        assert_eq!(output["datatype"], datatype.as_str());
        let body =
            json!({"inputs": [{"name": "t", "shape": [3], "datatype": datatype.as_str(), "data": output["data"]}]});
        let mut req = InferRequest::from_json(&serde_json::to_vec(&body).unwrap()).unwrap();
        let got = req.decode_inputs(&one_input(datatype)).unwrap();
        assert_eq!(got, vec![t], "{datatype}");
    }
}

#[test]
fn bytes_elements_are_length_prefixed_little_endian() {
    let data = TensorData::Bytes(vec![b"ab".to_vec(), Vec::new(), vec![0xff; 3]]);
    let mut raw = Vec::new();
    binary::encode(&data, &mut raw).unwrap();
    assert_eq!(raw, [&[2, 0, 0, 0][..], b"ab", &[0, 0, 0, 0], &[3, 0, 0, 0], &[0xff; 3]].concat());
    assert_eq!(binary::decode(&raw, DataType::Bytes, 3).unwrap(), data);
    let mut numbers = Vec::new();
    binary::encode(&TensorData::Int32(vec![1, -2]), &mut numbers).unwrap();
    assert_eq!(numbers, [1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff]);
}

#[test]
fn bf16_has_no_json_form() {
    let sig = one_input(DataType::Bf16);
    let mut req =
        InferRequest::from_json(br#"{"inputs":[{"name":"t","shape":[1],"datatype":"BF16","data":[1.0]}]}"#).unwrap();
    let err = req.decode_inputs(&sig).unwrap_err();
    assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
    assert!(err.message.starts_with("input \"t\": BF16 has no JSON form"), "{}", err.message);
    // Asked for in JSON (the default), a BF16 output is refused before the model runs.
    let req = InferRequest::from_json(br#"{"inputs":[]}"#).unwrap();
    assert!(req.output_forms(&sig).unwrap_err().message.starts_with("output \"t\" is BF16, which has no JSON form"));
    let req = InferRequest::from_json(br#"{"inputs":[],"parameters":{"binary_data_output":true}}"#).unwrap();
    assert!(req.output_forms(&sig).is_ok());
}

#[test]
fn json_and_binary_inputs_mix_in_one_request() {
    let mut raw = Vec::new();
    binary::encode(&TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), &mut raw).unwrap();
    let got = decode_binary(
        &sig(),
        json!({"inputs": [
            {"name": "flag", "shape": [2], "datatype": "BOOL", "data": [true, false]},
            {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
        ]}),
        &raw,
    )
    .unwrap();
    assert_eq!(got[0].data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    assert_eq!(got[1].data, TensorData::Bool(vec![true, false]));
}

#[test]
fn binary_inputs_take_their_bytes_in_request_order() {
    // Request order (flag, x) differs from model order (x, flag).
    let tail = [&[1u8, 0][..], &[0u8; 12]].concat();
    let got = decode_binary(
        &sig(),
        json!({"inputs": [
            {"name": "flag", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}},
            {"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
        ]}),
        &tail,
    )
    .unwrap();
    assert_eq!(got[0].data, TensorData::Fp32(vec![0.0; 3]));
    assert_eq!(got[1].data, TensorData::Bool(vec![true, false]));
}

#[test]
fn each_binary_refusal_names_the_problem() {
    let x = |size: serde_json::Value| json!({"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": size}});
    let flag = json!({"name": "flag", "shape": [1], "datatype": "BOOL", "data": [true]});
    let cases: Vec<(serde_json::Value, Vec<u8>, &str)> = vec![
        (
            json!({"inputs": [x(json!(8)), flag.clone()]}),
            vec![0; 8],
            "input \"x\": shape [1, 3]: 3 FP32 elements need 12 bytes, binary_data_size is 8",
        ),
        (
            json!({"inputs": [x(json!(12)), flag.clone()]}),
            vec![0; 8],
            "input \"x\": parameters.binary_data_size is 12 bytes, but only 8 bytes of binary data remain",
        ),
        (
            json!({"inputs": [x(json!(12)), flag.clone()]}),
            vec![0; 14],
            "14 bytes of binary data follow the JSON header, but the inputs' parameters.binary_data_size add up to 12; 2 bytes are left over",
        ),
        (
            json!({"inputs": [x(json!(-1)), flag.clone()]}),
            vec![],
            "input \"x\": parameters.binary_data_size must be a whole number of bytes, got -1",
        ),
        (
            json!({"inputs": [x(json!("12")), flag.clone()]}),
            vec![0; 12],
            "input \"x\": parameters.binary_data_size must be a whole number of bytes, got \"12\"",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3],
                "parameters": {"binary_data_size": 12}}, flag.clone()]}),
            vec![0; 12],
            "input \"x\" has both data and parameters.binary_data_size",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32"}, flag.clone()]}),
            vec![],
            "input \"x\" has no data",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
                {"name": "flag", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}]}),
            vec![1, 2],
            "input \"flag\": BOOL element 1 is the byte 2, not 0 or 1",
        ),
        (
            // A shape of 2^63 elements with 12 bytes: refused by arithmetic, nothing allocated.
            json!({"inputs": [{"name": "x", "shape": [3074457345618258602_u64, 3], "datatype": "FP32",
                "parameters": {"binary_data_size": 12}}, flag.clone()]}),
            vec![0; 12],
            "input \"x\": shape [3074457345618258602, 3]: 9223372036854775806 FP32 elements need more than usize::MAX bytes, binary_data_size is 12",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1000000000, 3], "datatype": "FP32",
                "parameters": {"binary_data_size": 12}}, flag.clone()]}),
            vec![0; 12],
            "input \"x\": shape [1000000000, 3]: 3000000000 FP32 elements need 12000000000 bytes, binary_data_size is 12",
        ),
    ];
    for (request, tail, want) in cases {
        let got = decode_binary(&sig(), request.clone(), &tail).unwrap_err();
        assert!(got.starts_with(want), "request {request}\n got  {got}\n want {want}");
    }
}

#[test]
fn bytes_refusals_name_the_element() {
    let sig = one_input(DataType::Bytes);
    let request = |size: usize, shape: usize| json!({"inputs": [{"name": "t", "shape": [shape], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]});
    let cases: Vec<(serde_json::Value, Vec<u8>, &str)> = vec![
        (request(6, 1), vec![5, 0, 0, 0, b'a', b'b'], "input \"t\": BYTES element 0 runs past the end of its 6 bytes"),
        (request(3, 1), vec![5, 0, 0], "input \"t\": BYTES element 0 runs past the end of its 3 bytes"),
        (
            request(10, 1),
            vec![1, 0, 0, 0, b'a', 1, 0, 0, 0, b'b'],
            "input \"t\": the shape needs 1 BYTES elements, the binary data holds more than 1",
        ),
        (
            request(5, 2),
            vec![1, 0, 0, 0, b'a'],
            "input \"t\": the shape needs 2 BYTES elements, the binary data holds 1",
        ),
        (request(0, 1), vec![], "input \"t\": the shape needs 1 BYTES elements, the binary data holds 0"),
        // A huge length prefix does not allocate: it runs past the body.
        (request(4, 1), vec![0xff, 0xff, 0xff, 0xff], "input \"t\": BYTES element 0 runs past the end of its 4 bytes"),
    ];
    for (req, tail, want) in cases {
        let got = decode_binary(&sig, req.clone(), &tail).unwrap_err();
        assert!(got.starts_with(want), "request {req}\n got  {got}\n want {want}");
    }
    let mut req =
        InferRequest::from_json(br#"{"inputs":[{"name":"t","shape":[1],"datatype":"BYTES","data":[7]}]}"#).unwrap();
    assert!(req.decode_inputs(&sig).unwrap_err().message.contains("element 0 is 7, not a valid BYTES value"));
}

#[test]
fn the_header_length_is_checked_against_the_body() {
    let body = bytes::Bytes::from_static(br#"{"inputs":[]}"#);
    for (header, want) in [
        (
            &b"14"[..],
            "the Inference-Header-Content-Length header says 14 bytes of JSON, but the body has only 13 bytes",
        ),
        (b"-1", "the Inference-Header-Content-Length header must be the JSON header's length in bytes, got \"-1\""),
        (b"ten", "the Inference-Header-Content-Length header must be the JSON header's length in bytes, got \"ten\""),
        (b"99999999999999999999999", "the Inference-Header-Content-Length header must be"),
        (b"5", "malformed JSON"),
    ] {
        let err = InferRequest::from_body(body.clone(), Some(header)).unwrap_err();
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
        assert!(err.message.starts_with(want), "header {header:?}\n got  {}\n want {want}", err.message);
    }
    let ok = InferRequest::from_body(body.clone(), Some(b"13")).unwrap();
    assert!(ok.binary.is_empty() && ok.has_binary_header);
    // Binary sizes without the header: the tail is empty, and the message says why.
    let mut req = InferRequest::from_json(
        br#"{"inputs":[{"name":"t","shape":[1],"datatype":"INT32","parameters":{"binary_data_size":4}}]}"#,
    )
    .unwrap();
    let err = req.decode_inputs(&one_input(DataType::Int32)).unwrap_err().message;
    assert!(err.ends_with("(binary data needs the Inference-Header-Content-Length header)"), "{err}");
}

#[test]
fn outputs_go_binary_as_asked() {
    let sig = Signature {
        inputs: vec![],
        outputs: vec![
            TensorSpec { name: "a".into(), datatype: DataType::Int64, shape: vec![-1] },
            TensorSpec { name: "b".into(), datatype: DataType::Fp32, shape: vec![-1] },
        ],
    };
    let forms = |body: serde_json::Value| {
        InferRequest::from_json(&serde_json::to_vec(&body).unwrap()).unwrap().output_forms(&sig)
    };
    let all = forms(json!({"inputs": [], "parameters": {"binary_data_output": true}})).unwrap();
    assert!(all.is_binary("a") && all.is_binary("b"));
    let one =
        forms(json!({"inputs": [], "outputs": [{"name": "a", "parameters": {"binary_data": true}}, {"name": "b"}]}))
            .unwrap();
    assert!(one.is_binary("a") && !one.is_binary("b"));
    let except = forms(json!({"inputs": [], "parameters": {"binary_data_output": true},
        "outputs": [{"name": "a", "parameters": {"binary_data": false}}, {"name": "b"}]}))
    .unwrap();
    assert!(!except.is_binary("a") && except.is_binary("b"));
    let none = forms(json!({"inputs": []})).unwrap();
    assert!(!none.any_binary());
    let err =
        forms(json!({"inputs": [], "outputs": [{"name": "a", "parameters": {"classification": 2}}]})).unwrap_err();
    assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
    assert!(err.message.contains("the classification extension is not supported; ask for the raw output"));
    let err =
        forms(json!({"inputs": [], "outputs": [{"name": "a", "parameters": {"binary_data": "yes"}}]})).unwrap_err();
    assert_eq!(err.message, "output \"a\": parameters.binary_data must be true or false, got \"yes\"");
    let err = forms(json!({"inputs": [], "parameters": {"binary_data_output": 1}})).unwrap_err();
    assert_eq!(err.message, "parameters.binary_data_output must be true or false, got 1");

    // The answer: JSON header with binary_data_size and no data, then the bytes in output order.
    let outputs = vec![
        Tensor { name: "a".into(), shape: vec![2], data: TensorData::Int64(vec![1, -1]) },
        Tensor { name: "b".into(), shape: vec![1], data: TensorData::Fp32(vec![0.5]) },
    ];
    let encoded = encode_response("m", Some("v1"), Some("id-7"), &outputs, &except).unwrap();
    let n = encoded.header_length.unwrap();
    let head: serde_json::Value = serde_json::from_slice(&encoded.body[..n]).unwrap();
    assert_eq!(
        head,
        json!({"model_name": "m", "model_version": "v1", "id": "id-7", "outputs": [
            {"name": "a", "datatype": "INT64", "shape": [2], "data": [1, -1]},
            {"name": "b", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}},
        ]})
    );
    assert_eq!(&encoded.body[n..], 0.5f32.to_le_bytes());
    let plain = encode_response("m", None, None, &outputs, &none).unwrap();
    assert_eq!(plain.header_length, None);
    serde_json::from_slice::<serde_json::Value>(&plain.body).unwrap();
}

#[test]
fn a_binary_request_has_a_plain_json_copy() {
    let mut raw = Vec::new();
    binary::encode(&TensorData::Fp32(vec![1.0, 2.0, 3.0]), &mut raw).unwrap();
    let (body, length) = binary_request(
        json!({"id": "r", "inputs": [
            {"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
            {"name": "flag", "shape": [1], "datatype": "BOOL", "data": [true]}],
            "outputs": [{"name": "y", "parameters": {"binary_data": true}}]}),
        &raw,
    );
    let mut req = InferRequest::from_body(body, Some(length.as_bytes())).unwrap();
    assert!(req.uses_binary());
    let inputs = req.decode_inputs(&sig()).unwrap();
    let mut copy = InferRequest::from_json(&req.to_plain_json(&inputs).unwrap()).unwrap();
    assert!(!copy.uses_binary());
    assert_eq!(copy.decode_inputs(&sig()).unwrap(), inputs);
    assert_eq!(copy.id.as_deref(), Some("r"));
    assert_eq!(copy.selected_outputs(&sig()).unwrap(), Some(vec!["y".to_string()]));
    let bf = [Tensor { name: "t".into(), shape: vec![1], data: TensorData::Bf16(vec![bf16::ONE]) }];
    assert_eq!(req.to_plain_json(&bf), None, "BF16 has no JSON form");
}

#[test]
fn a_shape_sets_the_first_reservation_but_a_huge_claim_reserves_no_more_than_a_cap() {
    use super::oip::InputData;
    let parsed = |shape: &str| {
        let body = format!(r#"{{"inputs":[{{"name":"x","shape":{shape},"datatype":"FP32","data":[1,2,3]}}]}}"#);
        let mut req = InferRequest::from_json(body.as_bytes()).unwrap();
        match req.inputs.remove(0).data {
            Some(InputData::Typed(Ok(TensorData::Fp32(v)))) => v,
            other => panic!("not typed FP32 data: {other:?}"),
        }
    };
    // Three elements announced: one allocation of three.
    let v = parsed("[1,3]");
    assert_eq!((v.len(), v.capacity()), (3, 3));
    // An absurd claim reserves at most 4,096 elements (else a tiny body could reserve gigabytes).
    for claim in ["[1000000000000]", "[4294967296,4294967296]", "[-1,3]"] {
        let v = parsed(claim);
        assert_eq!(v, vec![1.0, 2.0, 3.0], "{claim}");
        assert!(v.capacity() <= 4096, "{claim}: capacity {}", v.capacity());
    }
}
