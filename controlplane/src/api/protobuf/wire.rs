//! The protobuf wire format, reading side: varints, length-delimited fields, fixed-width
//! numbers, and skipping fields.

use super::ProtobufError;

/// Wire types.
pub const VARINT: u8 = 0;
pub const FIXED64: u8 = 1;
pub const LENGTH_DELIMITED: u8 = 2;
pub const FIXED32: u8 = 5;

#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    pub fn done(&self) -> bool {
        self.position >= self.bytes.len()
    }

    pub fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.position)
                .ok_or(ProtobufError::Truncated)?;
            self.position += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtobufError::BadVarint)
    }

    /// A field key: (field number, wire type).
    pub fn key(&mut self) -> Result<(u32, u8), ProtobufError> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| ProtobufError::BadVarint)?;
        Ok((number, (key & 7) as u8))
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], ProtobufError> {
        let end = self
            .position
            .checked_add(length)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(ProtobufError::Truncated)?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    pub fn length_delimited(&mut self) -> Result<&'a [u8], ProtobufError> {
        let length = usize::try_from(self.varint()?).map_err(|_| ProtobufError::Truncated)?;
        self.take(length)
    }

    pub fn fixed64(&mut self) -> Result<u64, ProtobufError> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(
            bytes.try_into().map_err(|_| ProtobufError::Truncated)?,
        ))
    }

    /// Skips a field's value of `wire_type`.
    pub fn skip(&mut self, wire_type: u8) -> Result<(), ProtobufError> {
        match wire_type {
            VARINT => self.varint().map(|_| ()),
            FIXED64 => self.take(8).map(|_| ()),
            LENGTH_DELIMITED => self.length_delimited().map(|_| ()),
            FIXED32 => self.take(4).map(|_| ()),
            other => Err(ProtobufError::WireType(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields() {
        // field 1, varint 300; field 2, "hi"
        let bytes = [0x08, 0xac, 0x02, 0x12, 0x02, b'h', b'i'];
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.key().unwrap(), (1, VARINT));
        assert_eq!(reader.varint().unwrap(), 300);
        assert_eq!(reader.key().unwrap(), (2, LENGTH_DELIMITED));
        assert_eq!(reader.length_delimited().unwrap(), b"hi");
        assert!(reader.done());
        let mut short = Reader::new(&[0x12, 0x05, b'x']);
        short.key().unwrap();
        assert!(matches!(
            short.length_delimited(),
            Err(ProtobufError::Truncated)
        ));
    }
}
