//! Counting what a gRPC request body carries as its bytes arrive, without
//! decoding it: its size, and the top-level field-1 records of each message
//! (the `items` of a `BatchSignX509SvidRequest`).
//!
//! signet-ca uses it to refuse a batch of millions of empty items after
//! `max_batch + 1` of them, before any decoding multiplies its size in
//! memory. It reads untrusted bytes, so it never panics on any input (a
//! fuzz target checks it) and gives up counting, leaving the size cap in
//! force, on anything that is not protobuf it can follow.

/// The gRPC frame header: compression flag and big-endian length.
pub const FRAME_HEADER: usize = 5;

/// Why a body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// More bytes than allowed.
    #[error("request is larger than {max_message} bytes")]
    TooLarge {
        /// The largest message allowed (the body cap less one frame header).
        max_message: usize,
    },
    /// More field-1 records than allowed.
    #[error("batch has more than {max} items; the limit is {max}")]
    TooManyItems {
        /// The limit.
        max: usize,
    },
}

/// Counts the bytes of a request body and, for a batch, the top-level
/// field-1 (`items`) records of each gRPC message, without decoding them.
#[derive(Debug)]
pub struct BodyScan {
    max_body: usize,
    seen: usize,
    max_items: Option<usize>,
    items: usize,
    frame: FrameState,
}

#[derive(Debug)]
enum FrameState {
    Header {
        buf: [u8; FRAME_HEADER],
        have: usize,
    },
    Message {
        left: usize,
        field: Field,
    },
}

#[derive(Debug)]
enum Field {
    Tag { acc: u64, shift: u32 },
    Varint,
    Len { acc: u64, shift: u32 },
    Skip(u64),
}

/// One more byte of a varint: `Some(value)` when it ends here, `None` when
/// more follow; `Err` when it is longer than 64 bits.
fn varint_step(acc: &mut u64, shift: &mut u32, b: u8) -> Result<Option<u64>, ()> {
    if *shift > 63 {
        return Err(());
    }
    *acc |= u64::from(b & 0x7f) << *shift;
    *shift += 7;
    Ok((b & 0x80 == 0).then_some(*acc))
}

const NEW_TAG: Field = Field::Tag { acc: 0, shift: 0 };

impl BodyScan {
    /// A scanner refusing more than `max_body` bytes in all (frame headers
    /// included) and, when `max_items` is given, more than `max_items`
    /// field-1 records in a message.
    #[must_use]
    pub fn new(max_body: usize, max_items: Option<usize>) -> Self {
        Self {
            max_body,
            seen: 0,
            max_items,
            items: 0,
            frame: FrameState::Header {
                buf: [0; FRAME_HEADER],
                have: 0,
            },
        }
    }

    /// The field-1 records counted so far.
    #[must_use]
    pub fn items(&self) -> usize {
        self.items
    }

    /// Takes the next bytes of the body.
    ///
    /// # Errors
    /// [`ScanError`] as soon as the body is over one of the limits; later
    /// calls are not meaningful.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ScanError> {
        self.seen = self.seen.saturating_add(data.len());
        if self.seen > self.max_body {
            return Err(ScanError::TooLarge {
                max_message: self.max_body.saturating_sub(FRAME_HEADER),
            });
        }
        let Some(max_items) = self.max_items else {
            return Ok(());
        };
        while let Some((&b, rest)) = data.split_first() {
            match &mut self.frame {
                FrameState::Header { buf, have } => {
                    buf[*have] = b;
                    *have += 1;
                    data = rest;
                    if *have == FRAME_HEADER {
                        if buf[0] != 0 {
                            // Compressed: not accepted by the server anyway,
                            // and nothing to count without inflating it.
                            self.max_items = None;
                            return Ok(());
                        }
                        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                        self.frame = FrameState::Message {
                            left: len as usize,
                            field: NEW_TAG,
                        };
                    }
                }
                FrameState::Message { left, .. } if *left == 0 => {
                    self.frame = FrameState::Header {
                        buf: [0; FRAME_HEADER],
                        have: 0,
                    };
                }
                FrameState::Message { left, field } => {
                    if let Field::Skip(n) = field {
                        let k = data
                            .len()
                            .min(*left)
                            .min(usize::try_from(*n).unwrap_or(usize::MAX));
                        data = &data[k..];
                        *left -= k;
                        *n -= k as u64;
                        if *n == 0 {
                            *field = NEW_TAG;
                        }
                        continue;
                    }
                    data = rest;
                    *left -= 1;
                    let next = match field {
                        Field::Tag { acc, shift } => match varint_step(acc, shift, b) {
                            Err(()) => None,
                            Ok(None) => continue,
                            Ok(Some(tag)) => {
                                let (number, wire) = (tag >> 3, tag & 7);
                                if number == 1 && wire == 2 {
                                    self.items += 1;
                                    if self.items > max_items {
                                        return Err(ScanError::TooManyItems { max: max_items });
                                    }
                                }
                                match wire {
                                    0 => Some(Field::Varint),
                                    1 => Some(Field::Skip(8)),
                                    2 => Some(Field::Len { acc: 0, shift: 0 }),
                                    5 => Some(Field::Skip(4)),
                                    _ => None,
                                }
                            }
                        },
                        Field::Varint => Some(if b & 0x80 == 0 {
                            NEW_TAG
                        } else {
                            Field::Varint
                        }),
                        Field::Len { acc, shift } => match varint_step(acc, shift, b) {
                            Err(()) => None,
                            Ok(None) => continue,
                            Ok(Some(0)) => Some(NEW_TAG),
                            Ok(Some(n)) => Some(Field::Skip(n)),
                        },
                        Field::Skip(_) => Some(NEW_TAG),
                    };
                    match next {
                        Some(f) => *field = f,
                        None => {
                            // Not protobuf we can follow; the decoder will
                            // refuse it, and the size cap still holds.
                            self.max_items = None;
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
