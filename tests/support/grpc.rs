//! gRPC test support: the generated client over h2c, requests built from the inputs that
//! models/generate.py recorded, and readers of their answers.

use super::{expected_outputs, Gateway};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use modelgate::protocol::grpc::pb::model_infer_request::InferInputTensor;
use modelgate::protocol::grpc::pb::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use serde_json::Value;
use std::net::SocketAddr;

/// The generated gRPC client over an HTTP/2 (h2c) connection pool.
pub type GrpcClient = modelgate::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient<
    Client<hyper_util::client::legacy::connect::HttpConnector, tonic::body::Body>,
>;

impl Gateway {
    /// A gRPC client of this gateway's gRPC listener.
    pub fn grpc_client(&self) -> GrpcClient {
        grpc_client(self.grpc.expect("this gateway has no gRPC listener: set server.grpc_listen"))
    }
}

/// A gRPC client of the gRPC listener at `addr` (h2c).
pub fn grpc_client(addr: SocketAddr) -> GrpcClient {
    // Without TCP_NODELAY an h2 client waits on the peer's delayed ACK: 40 ms a call.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let pool = Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
    GrpcClient::with_origin(pool, format!("http://{addr}").parse().unwrap())
}

/// The input that models/generate.py ran through Python onnxruntime for `model`, and the
/// outputs it recorded.
pub fn recorded(model: &str) -> (String, Value, Value) {
    let e = &expected_outputs()["models"][model];
    let (name, input) = e["inputs"].as_object().unwrap().iter().next().unwrap();
    (name.clone(), input.clone(), e["outputs"].clone())
}

pub fn shape(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// An inference request for `route` with `input` as typed contents, or as raw bytes.
pub fn request(route: &str, name: &str, input: &Value, raw: bool) -> ModelInferRequest {
    let datatype = input["datatype"].as_str().unwrap().to_string();
    let data = floats(&input["data"]);
    let (contents, raw_input_contents) = match (raw, datatype.as_str()) {
        (false, "FP32") => (
            Some(InferTensorContents { fp32_contents: data.iter().map(|&x| x as f32).collect(), ..Default::default() }),
            vec![],
        ),
        (false, _) => (Some(InferTensorContents { fp64_contents: data, ..Default::default() }), vec![]),
        (true, "FP32") => (None, vec![data.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect()]),
        (true, _) => (None, vec![data.iter().flat_map(|&x| x.to_le_bytes()).collect()]),
    };
    ModelInferRequest {
        model_name: route.into(),
        id: format!("req-{route}"),
        inputs: vec![InferInputTensor {
            name: name.into(),
            datatype,
            shape: shape(&input["shape"]),
            parameters: Default::default(),
            contents,
        }],
        raw_input_contents,
        ..Default::default()
    }
}

/// Each output's elements as f64 (INT64 and FP32 widened), read from typed or raw contents.
pub fn output_values(resp: &ModelInferResponse, name: &str) -> Vec<f64> {
    let (i, out) = resp.outputs.iter().enumerate().find(|(_, o)| o.name == name).expect("output missing");
    if let Some(c) = &out.contents {
        assert!(resp.raw_output_contents.is_empty(), "typed and raw outputs mixed");
        return match out.datatype.as_str() {
            "INT64" => c.int64_contents.iter().map(|&x| x as f64).collect(),
            "FP32" => c.fp32_contents.iter().map(|&x| x as f64).collect(),
            _ => c.fp64_contents.clone(),
        };
    }
    let raw = &resp.raw_output_contents[i];
    match out.datatype.as_str() {
        "INT64" => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        "FP32" => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        _ => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
    }
}

pub fn header(meta: &tonic::metadata::MetadataMap, name: &str) -> String {
    meta.get(name).unwrap_or_else(|| panic!("no {name} in {meta:?}")).to_str().unwrap().to_string()
}
