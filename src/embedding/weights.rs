//! Reading a safetensors checkpoint one tensor at a time, straight into each tensor's storage.
//!
//! It owns the safetensors file format as far as loading needs it (an 8-byte little-endian
//! header length, a JSON header of `name → {dtype, shape, data_offsets}`, then the data) and a
//! candle `VarBuilder` backend over it. Reading the whole file first and letting candle copy
//! every tensor out of that buffer holds the file twice at the end of loading: 90 MB of buffer
//! on top of 90 MB of tensors for all-MiniLM-L6-v2, which was the gateway's peak memory. Here
//! an f32 tensor is read in small chunks into the vector that becomes its storage, so the peak
//! is the model plus one chunk. A table that is only ever looked up by row (BERT's word
//! embeddings: 47 MB of the model's 90) can instead stay in the file as [`RowsOnDisk`], each
//! row read when a text needs it and kept warm by the OS's page cache, not the process's memory.
//! What the tensors mean belongs to `embedding::bert`.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The largest header accepted (the format's own limit is 100 MB; a BERT header is a few KB).
const MAX_HEADER: u64 = 100 << 20;
/// Bytes read at a time while filling an f32 tensor.
const CHUNK: usize = 64 << 10;

/// One tensor's entry in the header.
#[derive(serde::Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// An open checkpoint: the header parsed, the file kept open for reading tensors on demand
/// (positional reads, so no shared file position and no lock).
pub struct SafetensorsFile {
    file: File,
    /// Where the data starts: 8 + the header's length.
    data_start: u64,
    entries: HashMap<String, Entry>,
}

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

impl SafetensorsFile {
    /// Opens `path` and reads its header; every entry is checked to lie inside the file and to
    /// have as many bytes as its shape and dtype need.
    pub fn open(path: &Path) -> candle_core::Result<Self> {
        let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
        let len = file.metadata().map_err(|e| err(e.to_string()))?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|e| err(format!("the header's length: {e}")))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER || 8 + n > len {
            return Err(err(format!(
                "a header of {n} bytes in a file of {len} bytes"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| err(format!("the header: {e}")))?;
        let mut raw: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| err(format!("the header: {e}")))?;
        raw.remove("__metadata__");
        let data_start = 8 + n;
        let mut entries = HashMap::with_capacity(raw.len());
        for (name, value) in raw {
            let entry: Entry =
                serde_json::from_value(value).map_err(|e| err(format!("tensor {name}: {e}")))?;
            let [start, end] = entry.data_offsets;
            // A type this reader cannot turn into a tensor is refused when that tensor is read.
            let size_fits = dtype(&entry.dtype).map_or(true, |d| {
                (d.size_in_bytes() as u64).checked_mul(entry.shape.iter().product::<usize>() as u64)
                    == end.checked_sub(start)
            });
            if start > end || end > len - data_start || !size_fits {
                return Err(err(format!(
                    "tensor {name}: {} {:?} at bytes {start}..{end} of a {} byte data section",
                    entry.dtype,
                    entry.shape,
                    len - data_start
                )));
            }
            entries.insert(name, entry);
        }
        Ok(Self {
            file,
            data_start,
            entries,
        })
    }

    fn entry(&self, name: &str) -> candle_core::Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| err(format!("no tensor named {name} in the checkpoint")))
    }

    /// Whether the checkpoint holds a tensor named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The f32 table `name`, of shape `(rows, cols)`, left in the file and read a row at a time.
    pub fn rows_on_disk(
        &self,
        name: &str,
        (rows, cols): (usize, usize),
    ) -> candle_core::Result<RowsOnDisk> {
        let entry = self.entry(name)?;
        if entry.dtype != "F32" || entry.shape != [rows, cols] {
            return Err(err(format!(
                "tensor {name}: {} {:?}, expected F32 [{rows}, {cols}]",
                entry.dtype, entry.shape
            )));
        }
        Ok(RowsOnDisk {
            file: self.file.try_clone().map_err(|e| err(e.to_string()))?,
            start: self.data_start + entry.data_offsets[0],
            rows,
            cols,
        })
    }

    /// The tensor `name` as stored, on `dev`.
    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let entry = self.entry(name)?;
        let [start, end] = entry.data_offsets;
        let stored = dtype(&entry.dtype)?;
        let bytes = (end - start) as usize;
        let read = |buf: &mut [u8], at: u64| {
            self.file
                .read_exact_at(buf, self.data_start + at)
                .map_err(|e| err(format!("tensor {name}: {e}")))
        };
        if stored == DType::F32 {
            // Chunk by chunk into the vector the tensor takes over: no second copy of it.
            let mut values = Vec::with_capacity(bytes / 4);
            let mut chunk = vec![0u8; CHUNK.min(bytes)];
            let mut done = 0;
            while done < bytes {
                let buf = &mut chunk[..CHUNK.min(bytes - done)];
                read(buf, start + done as u64)?;
                push_f32(&mut values, buf);
                done += buf.len();
            }
            Tensor::from_vec(values, entry.shape.as_slice(), dev)
        } else {
            let mut buf = vec![0u8; bytes];
            read(&mut buf, start)?;
            Tensor::from_raw_buffer(&buf, stored, &entry.shape, dev)
        }
    }
}

/// An f32 table of a checkpoint that stays in the file: [`RowsOnDisk::select`] reads the rows a
/// text needs with positional reads (no shared file position, so no lock).
pub struct RowsOnDisk {
    file: File,
    /// The table's first byte in the file.
    start: u64,
    rows: usize,
    cols: usize,
}

impl RowsOnDisk {
    /// The rows `ids`, in order, as a `(ids.len(), cols)` tensor: what `index_select` on the
    /// whole table gives.
    pub fn select(&self, ids: &[u32], dev: &Device) -> candle_core::Result<Tensor> {
        let row_bytes = self.cols * 4;
        let mut bytes = vec![0u8; row_bytes];
        let mut values = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let id = id as usize;
            if id >= self.rows {
                return Err(err(format!(
                    "row {id} outside a table of {} rows",
                    self.rows
                )));
            }
            self.file
                .read_exact_at(&mut bytes, self.start + (id * row_bytes) as u64)
                .map_err(|e| err(format!("row {id}: {e}")))?;
            push_f32(&mut values, &bytes);
        }
        Tensor::from_vec(values, (ids.len(), self.cols), dev)
    }
}

/// Appends the little-endian f32 values of `bytes` (a multiple of 4 long) to `values`.
fn push_f32(values: &mut Vec<f32>, bytes: &[u8]) {
    values.extend(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
}

/// The candle dtype of a safetensors dtype name.
fn dtype(name: &str) -> candle_core::Result<DType> {
    Ok(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        other => return Err(err(format!("unsupported tensor type {other}"))),
    })
}

impl SimpleBackend for SafetensorsFile {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, dev)?;
        if tensor.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: tensor.shape().clone(),
            });
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint of two tensors written by hand in the safetensors layout.
    fn write(path: &Path, header: &str, data: &[u8]) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).expect("test");
    }

    #[test]
    fn reads_each_tensor_as_written_and_refuses_a_lying_header() {
        let dir = tempfile::tempdir().expect("test");
        let path = dir.path().join("m.safetensors");
        // 70,000 f32 values: more than one read chunk, so the chunk boundary is crossed.
        let big: Vec<f32> = (0..70_000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let small: [f32; 3] = [1.5, -2.0, 3.25];
        let mut data: Vec<u8> = small.iter().flat_map(|f| f.to_le_bytes()).collect();
        data.extend(big.iter().flat_map(|f| f.to_le_bytes()));
        let header = format!(
            r#"{{"__metadata__":{{"format":"pt"}},"b.bias":{{"dtype":"F32","shape":[3],"data_offsets":[0,12]}},"a.weight":{{"dtype":"F32","shape":[350,200],"data_offsets":[12,{}]}}}}"#,
            12 + 280_000
        );
        write(&path, &header, &data);
        let file = SafetensorsFile::open(&path).expect("test");
        assert!(file.contains_tensor("a.weight") && !file.contains_tensor("c"));
        let dev = Device::Cpu;
        let a = file
            .get(
                (350, 200).into(),
                "a.weight",
                candle_nn::Init::Const(0.),
                DType::F32,
                &dev,
            )
            .expect("test");
        assert_eq!(
            a.flatten_all()
                .expect("test")
                .to_vec1::<f32>()
                .expect("test"),
            big
        );
        let b = file
            .get_unchecked("b.bias", DType::F32, &dev)
            .expect("test");
        assert_eq!(b.to_vec1::<f32>().expect("test"), small);
        // The wrong shape is an error naming the tensor, not a reshaped tensor.
        let wrong = file.get(
            (3, 1).into(),
            "b.bias",
            candle_nn::Init::Const(0.),
            DType::F32,
            &dev,
        );
        assert!(wrong.expect_err("an error").to_string().contains("b.bias"));
        assert!(file.get_unchecked("c", DType::F32, &dev).is_err());

        // The same table left on disk: rows in the order asked, repeats included.
        let rows = file.rows_on_disk("a.weight", (350, 200)).expect("test");
        let picked = rows.select(&[349, 0, 7, 7], &dev).expect("test");
        let ids = Tensor::new(&[349u32, 0, 7, 7], &dev).expect("test");
        assert_eq!(
            picked.to_vec2::<f32>().expect("test"),
            a.index_select(&ids, 0)
                .expect("test")
                .to_vec2::<f32>()
                .expect("test")
        );
        assert!(rows.select(&[350], &dev).is_err());
        assert!(file.rows_on_disk("a.weight", (200, 350)).is_err());

        // A header whose sizes do not add up, or that points past the end, is refused at open.
        let short = r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#;
        write(&path, short, &[0; 12]);
        assert!(SafetensorsFile::open(&path).is_err());
        let past = r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        write(&path, past, &[0; 12]);
        assert!(SafetensorsFile::open(&path).is_err());
        let huge = r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551615]}}"#;
        write(&path, huge, &[0; 16]);
        assert!(SafetensorsFile::open(&path).is_err());
        // A type it cannot read does not stop the others; reading that tensor is the error.
        let odd = r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"m":{"dtype":"BOOL","shape":[2],"data_offsets":[8,10]}}"#;
        write(&path, odd, &[0, 0, 128, 63, 0, 0, 0, 64, 1, 0]);
        let file = SafetensorsFile::open(&path).expect("test");
        let x = file.get_unchecked("x", DType::F32, &dev).expect("test");
        assert_eq!(x.to_vec1::<f32>().expect("test"), [1.0, 2.0]);
        let m = file.get_unchecked("m", DType::F32, &dev);
        assert!(m.expect_err("an error").to_string().contains("BOOL"));
    }
}
