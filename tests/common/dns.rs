//! A DNS server on 127.0.0.1 (UDP, built with hickory-proto) whose A and SRV records a test changes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// The records the test DNS server answers with; names are lower-case, without the trailing dot.
#[derive(Default)]
pub struct Zone {
    pub a: HashMap<String, Vec<Ipv4Addr>>,
    /// (weight, port, target)
    pub srv: HashMap<String, Vec<(u16, u16, String)>>,
    /// Answer every query with this code and no records (SERVFAIL, REFUSED), as a broken resolver does.
    pub failing: Option<ResponseCode>,
}

pub struct Dns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: JoinHandle<()>,
}

impl Dns {
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let task = tokio::spawn(serve(socket, Arc::clone(&zone)));
        Self { addr, zone, task }
    }

    /// Stops answering (the socket closes: queries fail), then answers again on the same address.
    pub fn stop(&self) {
        self.task.abort();
    }

    pub async fn restart(&mut self) {
        let socket = UdpSocket::bind(self.addr).await.unwrap();
        self.task = tokio::spawn(serve(socket, Arc::clone(&self.zone)));
    }

    pub fn set(&self, edit: impl FnOnce(&mut Zone)) {
        edit(&mut self.zone.lock().unwrap());
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let answer = respond(&query, &zone.lock().unwrap());
        if let Ok(bytes) = answer.to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

fn respond(query: &Message, zone: &Zone) -> Message {
    let mut answer = Message::new();
    answer
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true);
    if let Some(code) = zone.failing {
        for q in query.queries() {
            answer.add_query(q.clone());
        }
        answer.set_authoritative(false).set_response_code(code);
        return answer;
    }
    let mut known = false;
    for q in query.queries() {
        answer.add_query(q.clone());
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        known |= zone.a.contains_key(&name) || zone.srv.contains_key(&name);
        match q.query_type() {
            RecordType::A => {
                for ip in zone.a.get(&name).into_iter().flatten() {
                    answer.add_answer(Record::from_rdata(q.name().clone(), 1, RData::A(A(*ip))));
                }
            }
            RecordType::SRV => {
                for (weight, port, target) in zone.srv.get(&name).into_iter().flatten() {
                    let target = Name::from_ascii(format!("{target}.")).unwrap();
                    answer.add_answer(Record::from_rdata(
                        q.name().clone(),
                        1,
                        RData::SRV(SRV::new(0, *weight, *port, target)),
                    ));
                }
            }
            _ => {}
        }
    }
    if !known {
        answer.set_response_code(ResponseCode::NXDomain);
    }
    answer
}
